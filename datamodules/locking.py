"""A file lock next to a ``data_dir``, so that concurrent ``prepare_data`` calls (a grid of runs
started at once, several SLURM jobs on one shared file system) prepare it once.

The lock is ``<data_dir>.lock`` beside the folder (``filelock.FileLock``: ``fcntl.flock`` on
POSIX); the first process writes the split files, the others wait, then find them up to date
and read them. The lock file itself is left in place (removing it would race with a waiter).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["data_dir_lock", "lock_path"]


def lock_path(data_dir: Path | str) -> Path:
    """``<data_dir>.lock``, a sibling of ``data_dir`` (``data/phantom`` -> ``data/phantom.lock``)."""
    data_dir = Path(data_dir).absolute()
    return data_dir.with_name(f"{data_dir.name}.lock")


@contextmanager
def data_dir_lock(data_dir: Path | str, notify_after: float = 2.0) -> Iterator[Path]:
    """Hold the exclusive lock of ``data_dir`` for the ``with`` body.

    Args:
        data_dir: the prepared-data folder (need not exist yet; its parent is created).
        notify_after: seconds of waiting after which one line says who is waited for.

    Yields:
        the lock file's path.
    """
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=notify_after)
    except Timeout:
        print(
            f"prepare_data: {data_dir} is being prepared by another process "
            f"(lock {path}); waiting for it",
            flush=True,
        )
        start = time.monotonic()
        lock.acquire()
        print(f"prepare_data: lock acquired after {time.monotonic() - start:.0f} s", flush=True)
    try:
        yield path
    finally:
        lock.release()
