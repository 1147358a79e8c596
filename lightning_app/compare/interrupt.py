"""Ctrl-C on a grid (``make compare``, ``make sweep-k``): stop launching, let running runs save.

While :func:`stop_on_interrupt` is active (the whole of ``run_comparison``), the first SIGINT

- sets :data:`STOP` (launchers start no further run; a SLURM launcher cancels its pending jobs),
- sends SIGTERM to every running fit or test started through :func:`run_child` (a Ctrl-C at a
  terminal has already sent them SIGINT; either signal makes a fit save ``last.ckpt`` and exit),
  and calls the hooks registered with :func:`on_interrupt` (SLURM: ``scancel --signal=TERM``);

the command then waits for those runs, reports what finished (marked incomplete), prints how to
resume, and exits 130 (:class:`Interrupted`). A second SIGINT stops at once: the running
children are killed and the process exits 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["STOP", "Interrupted", "on_interrupt", "run_child", "stop_on_interrupt"]

#: Set by the first SIGINT while a grid runs; launchers check it before starting a run.
STOP = threading.Event()
_children: set[subprocess.Popen] = set()
_hooks: list[Callable[[], None]] = []
_lock = threading.Lock()


class Interrupted(SystemExit):  # noqa: N818 (what happened, as KeyboardInterrupt says)
    """The grid was stopped by Ctrl-C; raised after the report of the finished runs. A
    ``SystemExit`` with status 130, so the command ends without a traceback."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGINT)


def run_child(cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run ``cmd`` with stdout and stderr appended to ``log_path``; return its exit status.
    The child is known to the interrupt handler while it runs (module docstring)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        with _lock:
            if STOP.is_set():
                return 128 + signal.SIGINT  # never started
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            _children.add(child)
        try:
            return child.wait()
        finally:
            with _lock:
                _children.discard(child)


def on_interrupt(hook: Callable[[], None]) -> None:
    """Call ``hook()`` at the first SIGINT (in the main thread; keep it short)."""
    with _lock:
        _hooks.append(hook)


def _handler(signum: int, frame: object) -> None:
    with _lock:
        children, hooks = list(_children), list(_hooks)
        first = not STOP.is_set()
        STOP.set()
    if first:
        print(
            "\nCtrl-C: no new runs; the running runs save their checkpoints and stop "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        for hook in hooks:
            hook()
        return
    print("Ctrl-C again: stopping at once", file=sys.stderr, flush=True)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    os._exit(128 + signal.SIGINT)


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """Handle SIGINT as the module docstring says while the block runs (main thread only;
    elsewhere the block runs unchanged); yields :data:`STOP`."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    STOP.clear()
    with _lock:
        _hooks.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield STOP
    finally:
        signal.signal(signal.SIGINT, previous)
        with _lock:
            _hooks.clear()
