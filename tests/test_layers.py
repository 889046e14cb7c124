"""The house's rules (DESIGN §2, ARCHITECTURE.md): imports run one way, nothing hides a circle in a
function, no module grows past a reader's page count."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp  # import-linter's graph of the imports

from tests.conftest import ROOT

PACKAGES = ("hostd", "vcpu", "irqsrc", "bench")
MAX_LINES = 600


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in Path(ROOT, pkg).rglob("*.py"))


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts, as `lint-imports` checks them."""
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    broken = r.stdout[r.stdout.find("Broken contracts"):] if "Broken contracts" in r.stdout else r.stdout
    assert r.returncode == 0, broken + r.stderr


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] if node.level == 0 else ["."]
    return [a.name for a in node.names]


def function_level_imports(path: Path) -> list[str]:
    """Imports of project modules inside a function that carry no `# lazy: <reason>`."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if not any(m == "." or m.split(".")[0] in PACKAGES for m in _imported(node)):
                continue
            # The reason is on the import's own line, or above the run of imports it begins.
            above = node.lineno - 2
            while above >= 0 and lines[above].lstrip().startswith(("from ", "import ")):
                above -= 1
            said = " ".join(lines[max(above, 0):node.end_lineno])
            if "# lazy: " not in said:
                out.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def test_no_import_between_project_modules_hides_in_a_function() -> None:
    found = sorted({x for p in sources() for x in function_level_imports(p)})
    assert not found, "imports inside functions without a `# lazy: <reason>` comment:\n" + "\n".join(found)


def test_a_function_level_import_without_its_reason_is_found(tmp_path) -> None:
    p = tmp_path / "probe.py"
    p.write_text("def f():\n    from hostd import cli\n    import json\n\n\ndef g():\n    # lazy: why\n"
                 "    from hostd import cli\n    from vcpu import abi\n")
    assert [x.split(": ", 1)[1] for x in function_level_imports(p)] == ["from hostd import cli"]


def test_no_module_is_longer_than_a_reader_takes_in() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split along their seams): {long}"


def test_every_package_folder_is_a_package() -> None:
    """setuptools' packages.find ships a folder only with its __init__.py (a wheel would lack it)."""
    missing = [d for pkg in PACKAGES[:3] for d, _, files in os.walk(Path(ROOT, pkg))
               if "__pycache__" not in d and any(f.endswith(".py") for f in files) and "__init__.py" not in files]
    assert not missing, missing


def test_bench_takes_no_private_name_from_hostd() -> None:
    """bench may use the engines, not their private parts (a name with a leading underscore)."""
    taken = []
    for p in Path(ROOT, "bench").rglob("*.py"):
        tree = ast.parse(p.read_text())
        bound = set()  # the names a hostd import binds in this module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hostd":
                taken += [f"{p.name}:{node.lineno}: {a.name}" for a in node.names if a.name.startswith("_")]
                bound |= {a.asname or a.name for a in node.names}
        taken += [f"{p.name}:{n.lineno}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
                  and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not taken, taken


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other_by_any_path() -> None:
    g = grimp.build_graph(*PACKAGES)
    graph = {m: g.find_modules_directly_imported_by(m) for m in g.modules}
    circles = import_circles(graph)
    assert not circles, f"import circles: {circles}"


def test_a_circle_is_found() -> None:
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []
