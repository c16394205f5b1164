"""Atomic, umask-respecting file writes and the clean-up of their orphaned temporary files.

A file is written to a temporary name next to its target (``.<name>.<random>.tmp``),
flushed to disk, given the mode a plain ``open()`` would give it (0666 minus the umask;
``mkstemp`` alone makes 0600) and moved into place with ``os.replace``, which is atomic
on POSIX and Windows: a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    The temporary file is removed if ``write`` fails, so no partial file is ever visible at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def orphan_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of interrupted :func:`atomic_write` calls directly in ``folder``."""
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.name.startswith(".") and f.name.endswith(TEMP_SUFFIX) and f.is_file())


def remove_orphan_temp_files(*folders: str | os.PathLike[str]) -> list[Path]:
    """Delete the :func:`orphan_temp_files` of each folder; returns what was removed."""
    removed = [f for folder in folders for f in orphan_temp_files(folder)]
    for f in removed:
        f.unlink(missing_ok=True)
    return removed


__all__ = ["atomic_write", "atomic_write_text", "orphan_temp_files", "remove_orphan_temp_files"]
