"""The keys of hostd's JSON documents (DESIGN §8: scripts read them), held against a saved list.

The list (tests/data/json_keys.json) was saved from main before the house's moves (issue 23) by
the tests that call check(), each for the document it makes. A key may be added, never lost: a
change that adds one adds it to the list by running those tests with HPEMU_SAVE_JSON_KEYS=1
(the list keeps every key it had) and committing the file. The items of a list are checked where
the document has some (a run with no discarded attempt has none to show).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SAVED = Path(__file__).parent / "data" / "json_keys.json"
# A discarded attempt repeats the keys of a run's own figures (checked there), and which cells a
# run discards depends on the machine's load: its items are not held to a list.
UNHELD = "discarded_attempts[]."


def paths(doc: object, prefix: str = "", nulls: set[str] | None = None) -> set[str]:
    """Every key of doc as a dotted path; a list's items under `[]`, a number-like key as `<n>`.
    nulls, if given, gets the paths whose value is null."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            name = "<n>" if str(k).lstrip("-").isdigit() else str(k)
            p = f"{prefix}.{name}" if prefix else name
            out.add(p)
            if v is None and nulls is not None:
                nulls.add(p)
            out |= paths(v, p, nulls)
    elif isinstance(doc, list):
        for v in doc:
            out |= paths(v, prefix + "[]", nulls)
    return out


def _under_null(key: str, nulls: set[str]) -> bool:
    """A key under a value that is null in this document (a figure this run could not give, as
    tune's best figure when polling bought nothing): the key is not lost."""
    return any(key.startswith(n + ".") or key.startswith(n + "[]") for n in nulls)


def _in_empty_list(key: str, have: set[str]) -> bool:
    """key lies in the items of a list that this document has, but empty in every place (a run
    that had no discarded attempt, say): nothing was lost."""
    if "[]" not in key:
        return False
    lst = key[:key.rindex("[]")]
    return lst in have and not any(k.startswith(lst + "[].") for k in have)


def check(name: str, doc: dict) -> None:
    """Every key saved for the document `name` is in doc."""
    saved = json.loads(SAVED.read_text()) if SAVED.exists() else {}
    nulls: set[str] = set()
    have = paths(doc, nulls=nulls)
    if os.environ.get("HPEMU_SAVE_JSON_KEYS"):
        saved[name] = sorted(set(saved.get(name, ())) | have)
        SAVED.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
        return
    assert name in saved, f"no saved key list for {name!r}: run this test with HPEMU_SAVE_JSON_KEYS=1"
    missing = sorted(k for k in set(saved[name]) - have
                     if not _in_empty_list(k, have) and not _under_null(k, nulls) and UNHELD not in k)
    assert not missing, f"{name}: {len(missing)} key(s) of the saved list are gone: {missing[:15]}"
