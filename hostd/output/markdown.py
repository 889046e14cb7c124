"""The same reports as GitHub markdown, for an issue or a mailing-list post: prose as paragraphs,
each table whole as a GitHub table (a reader's screen wraps it, so it is never split), the verdict
as a list. A report as hostd.output.console.TextReport's, written to a stream."""
from __future__ import annotations

from hostd.output.console import Column, plain


def _text(thing) -> str:
    """A printed thing's text without rich's markup or styles."""
    if isinstance(thing, str):
        from rich.text import Text  # lazy: rich costs start-up time every hostd command would pay

        return Text.from_markup(thing).plain
    return plain(thing)


def _cell(text: str) -> str:
    return " / ".join(line.strip() for line in text.replace("|", "\\|").split("\n") if line.strip()) or " "


class MarkdownReport:
    def __init__(self, out):
        self.out = out

    def _block(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n\n")

    def print(self, *things, **_) -> None:
        text = " ".join(_text(t) for t in things)
        if text.strip():
            self._block(text)

    def verdict(self, label: str, lines: list[str]) -> None:
        self._block(f"**{label.strip()}**\n\n" + "\n".join(f"- {line}" for line in lines))

    def table(self, title: str, key: list[Column], groups: list[list[Column]], rows: list[list],
              section_ends: frozenset[int] = frozenset()) -> None:
        cols = key + [c for g in groups for c in g]
        align = {"left": ":---", "right": "---:", "center": ":---:"}
        lines = [f"**{_cell(title)}**", ""] if title else []
        lines += ["| " + " | ".join(_cell(c.header) for c in cols) + " |",
                  "|" + "|".join(align.get(c.justify, "---") for c in cols) + "|"]
        lines += ["| " + " | ".join(_cell(plain(x)) for x in r) + " |" for r in rows]
        self._block("\n".join(lines))
