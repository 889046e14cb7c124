"""Progress of a long measurement: a bar whose total is the planned seconds, or a line per cell."""
from __future__ import annotations

import sys
import threading
import time


class Progress:
    """A rich progress bar on stderr whose total is the planned seconds (so the ETA is real time);
    a thread moves it along during each cell. Without a terminal: one line per finished cell."""

    def __init__(self, weights: list[float], enabled: bool) -> None:
        self.live = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.total = sum(weights)
        self.done = 0.0
        self.bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as Bar, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self._end_cell()
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start_cell(self, label: str, weight: float) -> None:
        if self.bar is None:
            return
        self.bar.update(self.task, description=label, completed=self.done)
        self._stop.clear()
        t0 = time.monotonic()

        def tick() -> None:
            while not self._stop.wait(0.2):
                self.bar.update(self.task, completed=self.done + min(time.monotonic() - t0, 0.97 * weight))

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def _end_cell(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def end_cell(self, weight: float, line: str, extra: bool = False) -> None:
        """extra: the cell will be measured again, so the total grows by its weight."""
        self._end_cell()
        self.done += weight
        if extra:
            self.total += weight
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, total=self.total)
        elif self.enabled:
            sys.stderr.write(f"{line}\n")
            sys.stderr.flush()
