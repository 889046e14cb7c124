"""Where hostd's reports are printed: a rich Console for an output stream at a width, and tables laid
out to that width with every cell whole. A table whose columns cannot stand side by side is split,
its key columns repeated, rather than cut; a cell wraps between words, never inside one that fits.
Printers take a report (this module's, or hostd.output.markdown's) or a stream and a width."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

DEFAULT_WIDTH = 100  # not a terminal: wide enough for compare's tables, narrow enough to paste
PER_COLUMN = 3       # a border and a space either side of a column's text
EDGE = 1             # the table's right border


def width_for(out, width: int | None = None) -> int:
    """The width to print at: the one given; a terminal's own; else $COLUMNS as a terminal's would
    be honoured, or DEFAULT_WIDTH."""
    if width:
        return width
    if out.isatty():
        return shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else DEFAULT_WIDTH


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "right"
    style: str | None = None


def plain(cell) -> str:
    """A cell's text: a rich Text's plain text, or the string itself."""
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _measure(texts: list[str]) -> tuple[int, int]:
    """(natural, minimum) width of a column's texts: its longest line, its longest word."""
    from rich.cells import cell_len  # lazy: rich costs start-up time every hostd command would pay

    lines = [line for t in texts for line in t.split("\n")]
    words = [w for t in texts for w in t.split()]
    return max(map(cell_len, lines), default=1), max(map(cell_len, words), default=1)


def _fits(cols: list[int], widths: list[int], width: int) -> bool:
    return sum(widths[c] + PER_COLUMN for c in cols) + EDGE <= width


def split_columns(natural: list[int], minimum: list[int], n_key: int, groups: list[int], width: int) -> list[list[int]]:
    """The non-key columns of each table to print (indices; the key columns 0..n_key-1 lead each):
    whole groups (of the sizes `groups`) side by side while they fit at their natural widths; a
    group, or what was one table, parted between columns only where its words cannot fit."""
    key = list(range(n_key))
    chunks: list[list[int]] = []
    start = n_key
    for size in groups:
        group = list(range(start, start + size))
        start += size
        if chunks and _fits(key + chunks[-1] + group, natural, width):
            chunks[-1] += group
        else:
            chunks.append(group)
    out: list[list[int]] = []
    for chunk in chunks:
        part: list[int] = []
        for c in chunk:
            if part and not _fits(key + part + [c], minimum, width):
                out.append(part)
                part = []
            part.append(c)
        out.append(part)
    return out


def fit_widths(natural: list[int], minimum: list[int], room: int) -> list[int]:
    """Column widths summing to at most `room`: the widest column narrowed first, none below its
    longest word (where even that cannot fit, the widest words are folded: the least harm)."""
    w = list(natural)
    excess = sum(w) - room
    while excess > 0:
        over = [i for i in range(len(w)) if w[i] > minimum[i]] or [i for i in range(len(w)) if w[i] > 1]
        if not over:
            break
        i = max(over, key=lambda k: w[k])
        w[i] -= 1
        excess -= 1
    return w


def _reader_gone() -> None:
    """rich's own answer to a closed pipe is exit 1; hostd.cli ends the command as SIGPIPE would (141)."""
    raise BrokenPipeError


class TextReport:
    """A report printed by rich on a stream (or an existing Console) at a width."""

    def __init__(self, out=None, width: int | None = None, console=None):
        if console is None:
            from rich.console import Console  # lazy: rich costs start-up time every hostd command would pay

            console = Console(file=out, width=width_for(out, width))
            console.on_broken_pipe = _reader_gone
        self.console = console

    def print(self, *things, **kw) -> None:
        self.console.print(*things, **kw)

    def verdict(self, label: str, lines: list[str]) -> None:
        """A bold label, then one line per claim."""
        from rich.text import Text  # lazy: rich costs start-up time every hostd command would pay

        self.console.print(Text(label, style="bold"))
        for line in lines:
            self.console.print(Text("  - ") + Text(line))

    def table(self, title: str, key: list[Column], groups: list[list[Column]], rows: list[list],
              section_ends: frozenset[int] = frozenset()) -> None:
        """`rows`: cells (str or rich Text) for the key columns, then each group's in order; a
        section rule after the rows of index `section_ends`."""
        from rich.table import Table  # lazy: rich costs start-up time every hostd command would pay
        from rich.text import Text

        cols = key + [c for g in groups for c in g]
        texts = [[c.header] + [plain(r[i]) for r in rows] for i, c in enumerate(cols)]
        natural, minimum = zip(*map(_measure, texts)) if cols else ((), ())
        width = self.console.width
        self.console.print(Text(title, style="table.title"))
        for chunk in split_columns(list(natural), list(minimum), len(key), [len(g) for g in groups], width):
            shown = list(range(len(key))) + chunk
            widths = fit_widths([natural[i] for i in shown], [minimum[i] for i in shown],
                                width - EDGE - PER_COLUMN * len(shown))
            t = Table()
            for i, w in zip(shown, widths):
                c = cols[i]
                t.add_column(c.header, justify=c.justify, style=c.style, width=w, overflow="fold")
            for n, r in enumerate(rows):
                t.add_row(*(r[i] if isinstance(r[i], Text) else Text(str(r[i])) for i in shown),
                          end_section=n in section_ends)
            self.console.print(t)


def report_for(out, width: int | None = None):
    """The report to print into: `out` itself if it is one, a rich Console's, or a stream's."""
    if hasattr(out, "table"):
        return out
    if hasattr(out, "print") and hasattr(out, "width"):
        return TextReport(console=out)
    return TextReport(out, width)
