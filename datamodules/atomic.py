"""Files that appear under their final name only when complete.

:func:`atomic_path` yields a temporary path in the same folder as the final one
(``.tmp-<pid>-<name>``, so writers that go by the suffix, such as
nibabel's, still see it); when the block ends without error the file is flushed to disk and
renamed onto the final name (``os.replace``: atomic on POSIX), otherwise it is removed. A
reader therefore sees either the previous file or the complete new one, never a truncated
file, whatever stops the writer (a full disk, a SIGKILL, a lost node). A full disk, a quota, a
read-only or forbidden folder raise :class:`WriteError`, one line naming the final path.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteError", "atomic_path", "atomic_write_bytes", "atomic_write_text"]

#: errno values that mean "this folder cannot take the file" rather than a bug
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class WriteError(OSError):
    """A file could not be written (full disk, quota, permissions); the message names it."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Raises:
        WriteError: the folder is full, over quota, read-only or not writable (the final path
            is named; no file is left under either name).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # same suffixes: .nii.gz stays
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRORS:
            raise WriteError(exc.errno, f"cannot write {path}: {os.strerror(exc.errno)}") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
