"""The training log ``metrics.jsonl``: one JSON record per line, appended as training goes.

A process killed while appending can leave a torn last line; readers skip it, and a
resume rewrites the log (atomically) cut back to the step of the checkpoint it resumes
from, so the log always matches the weights and never holds a step twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import atomic_write_text


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The records of a JSONL metrics log (an empty list if the file does not exist).

    An unreadable *last* line (a write cut short) is skipped; an unreadable line before it is an error.
    """
    p = Path(path)
    if not p.is_file():
        return []
    lines = [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}: line {i + 1} is not JSON ({line[:40]!r}); allowed: one JSON record per line") from None
    return records


def append_metrics(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one record as a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def cut_metrics(path: str | os.PathLike[str], step: int) -> None:
    """Keep only the complete records of steps <= ``step`` (dropping torn and ``partial`` lines) if any other exist."""
    p = Path(path)
    if not p.is_file():
        return
    records = read_metrics(p)
    kept = [r for r in records if r.get("step", 0) <= step and not r.get("partial")]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if p.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write_text(p, text)


__all__ = ["append_metrics", "cut_metrics", "read_metrics"]
