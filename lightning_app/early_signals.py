"""A SLURM requeue signal (SIGUSR1) that arrives before the trainer can handle it.

SLURM sends ``--signal=USR1@<seconds>`` (or ``B:USR1`` to the batch script, which
:mod:`lightning_app.compare.job` forwards) at a fixed time before the job's limit, whatever the
job is doing, and Python's default action for SIGUSR1 ends the process. Lightning installs its
handler (save ``hpc_ckpt_<n>.ckpt``, ``scontrol requeue``) only once the trainer has prepared
the data, built the model and restored the checkpoint: minutes into a first run that
preprocesses its dataset. So:

- :func:`hold`, first thing in ``python -m lightning_app``: a SIGUSR1 is recorded, not fatal;
- :func:`release`, once the model is set up: SIGUSR1 back to its default, so that Lightning,
  which keeps any handler it finds, installs its own (a signal in the fraction of a second
  between the two still ends the process);
- :func:`replay`, once training or testing has started: a recorded signal is sent again, to
  Lightning's handler, or reported as ignored where Lightning has none (not a SLURM job with
  auto-requeue).

:class:`lightning_app.checkpoints.CheckpointOnTerminate` calls the last two.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["hold", "release", "replay"]

_received = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    print(
        "SIGUSR1 (SLURM's requeue signal) received while starting: handed to the trainer "
        "once training starts",
        flush=True,
    )


def hold() -> None:
    """Record SIGUSR1 instead of dying of it, where nothing else handles it yet."""
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
            signal.signal(signal.SIGUSR1, _record)


def release() -> None:
    """Give SIGUSR1 back to its default action if :func:`hold` still has it."""
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGUSR1) is _record:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def replay() -> bool:
    """Send a recorded SIGUSR1 again, to the handler installed since; ``True`` if it was."""
    global _received
    if not _received:
        return False
    _received = False
    handler = signal.getsignal(signal.SIGUSR1)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None, _record):
        print("SIGUSR1 ignored: no requeue handler (not a SLURM job with auto-requeue)", flush=True)
        return False
    signal.raise_signal(signal.SIGUSR1)
    return True
