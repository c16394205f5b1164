"""Progress bars: a tqdm bar on a terminal, else one plain line every few seconds.

Piped into a file or a CI log, a carriage-return bar becomes thousands of updates;
:func:`progress_bar` then prints ``desc: 120/2000 steps (6%), 12.3 steps/s, loss=0.41``
at most every ``interval`` seconds, and once at the end (with ``leave=False`` only if it
printed before).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: Seconds between two lines when the output is not a terminal.
LINE_INTERVAL = 5.0


class LineProgress:
    """The tqdm subset diffusekit uses (iterate, ``update``, ``set_postfix``, ``close``), printing plain lines."""

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None, unit: str, initial: int,
                 leave: bool, file: TextIO, interval: float) -> None:
        self.iterable = iterable
        self.desc, self.unit, self.leave, self.file, self.interval = desc, unit, leave, file, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = self._start_n = initial
        self._start = self._last = time.monotonic()
        self._postfix = ""
        self._printed_n: int | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._print()

    def set_postfix(self, refresh: bool = False, **values: object) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            printed = self._printed_n is not None
            if self.n > self._start_n and self.n != self._printed_n and (self.leave or printed):
                self._print()

    def _print(self) -> None:
        now = time.monotonic()
        self._last, self._printed_n = now, self.n
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        tail = f", {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {done} {self.unit}s{pct}, {rate:.3g} {self.unit}s/s{tail}", file=self.file, flush=True)


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, enabled: bool = True,
                 unit: str = "it", initial: int = 0, leave: bool = True, file: TextIO | None = None,
                 interval: float = LINE_INTERVAL) -> Any:
    """A progress bar over ``iterable`` (or updated by hand): tqdm on a terminal, :class:`LineProgress` else.

    ``enabled=False`` gives a silent bar with the same methods.
    """
    out = file if file is not None else sys.stderr
    notebook = "ipykernel" in sys.modules  # tqdm.auto draws a widget there
    if enabled and not notebook and not (hasattr(out, "isatty") and out.isatty()):
        return LineProgress(iterable, desc, total, unit, initial, leave, out, interval)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave, file=out,
                disable=not enabled, dynamic_ncols=True)


__all__ = ["LINE_INTERVAL", "LineProgress", "progress_bar"]
