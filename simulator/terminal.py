"""What people see in the terminal: tables that line up with Chinese labels (rich measures CJK cells as two
columns), a progress bar with rate and ETA, latency percentiles."""
from __future__ import annotations

import io
import statistics
import sys
import time
from typing import Any, Iterable, Sequence, TextIO


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = (), title: str | None = None,
          indent: int = 2, width: int = 200) -> str:
    """A plain-text table (no colour, no box-drawing beyond a rule under the header), CJK-aware."""
    from rich import box
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table

    right = set(right)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(str(h), justify="right" if i in right else "left", no_wrap=True, overflow="ellipsis")
    for r in rows:
        t.add_row(*("" if c is None else str(c) for c in r))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False,
            highlight=False, emoji=False, markup=False).print(Padding(t, (0, 0, 0, indent)))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines() if line.strip())


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 (statistics.quantiles, inclusive method) of latencies in seconds; {} for fewer than 2."""
    if len(samples) < 2:
        return {}
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(samples)}


class Progress:
    """A progress bar on stderr with rate and ETA (rich, on a terminal); a line per 10% otherwise."""

    def __init__(self, stream: TextIO | None = sys.stderr, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled and stream is not None
        self.tty = bool(self.enabled and getattr(stream, "isatty", lambda: False)())
        self.total = 0
        self.done = 0
        self.label = ""
        self._t0 = time.monotonic()
        self._last_decile = -1
        self._bar: Any = None
        self._task: Any = None

    def phase(self, label: str, total: int) -> None:
        self.finish()
        self.label, self.total, self.done, self._last_decile = label, total, 0, -1
        self._t0 = time.monotonic()
        if self.tty and total > 0:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._bar = _RichBar(Console(file=self.stream), TextColumn("{task.description:<22}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, rate="")
        self._draw()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def message(self, text: str) -> None:
        if self.enabled:
            self.finish()
            print(text, file=self.stream, flush=True)

    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def _draw(self) -> None:
        if not self.enabled or self.total <= 0:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate():.0f}/s")
            return
        if self.total >= 200:
            frac = min(1.0, self.done / self.total)
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                rate = self.rate()
                eta = f", ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 and self.done < self.total else ""
                speed = f", {rate:.0f}/s" if self.done else ""
                print(f"{self.label}: {self.done}/{self.total} ({decile * 10}%{speed}{eta})", file=self.stream,
                      flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.total = 0


def _RichBar(*args: Any) -> Any:  # noqa: N802 - a factory that reads like the class it makes
    from rich.progress import Progress as RichProgress
    console, *columns = args
    return RichProgress(*columns, console=console, transient=False, refresh_per_second=8)
