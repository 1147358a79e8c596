"""One line for a user's mistake, the full traceback for a developer.

:func:`run_reporting_errors` runs a command's ``main``; a ``ValueError`` (the argument checks of
the losses, datamodules and model), a missing or unwritable
file (an ``OSError`` such as ENOENT, ENOSPC or EACCES; :class:`datamodules.atomic.WriteError`
names the file a write was meant for) or Lightning's
``MisconfigurationException`` is printed as ``error: <message>`` on stderr, and the command
exits 2 (1 for a file system error). ``--debug`` on the command line (removed before the
command sees it) or ``LOG_LEVEL=debug`` in the environment re-raise it with its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.atomic import WriteError

__all__ = ["debug_requested", "run_reporting_errors"]

DEBUG_FLAG = "--debug"
_HINT = f"[{DEBUG_FLAG} or LOG_LEVEL=debug shows the traceback]"
#: a file that is missing, or that its folder cannot take (full, quota, read-only, forbidden)
_FILE_ERRORS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
}
#: the wording of the project's argument checks ("Expected argument `k` to be in (0, 100], ...")
_CHECK = re.compile(r"Expected argument `[^`]+`[^\n]*")


def debug_requested(argv: list[str]) -> bool:
    """True when ``argv`` holds ``--debug`` or ``$LOG_LEVEL`` is ``debug``."""
    return DEBUG_FLAG in argv or os.environ.get("LOG_LEVEL", "").lower() == "debug"


def _one_line(exc: BaseException) -> str:
    """``error: <message> [hint]``; a check's message wrapped by the config parser (which
    lists every type it tried) is taken out of the wrapping."""
    message = str(exc)
    inner = _CHECK.search(message)
    text = inner.group(0) if inner else " ".join(message.split()) or type(exc).__name__
    return f"error: {text.strip()} {_HINT}"


def run_reporting_errors(
    main: Callable[[list[str] | None], Any], argv: list[str] | None = None
) -> int:
    """Call ``main(None)`` with ``sys.argv[1:]`` set to ``argv`` (default: ``sys.argv[1:]``)
    without ``--debug``; report a user error in one line (module docstring).

    ``main`` reads the arguments from ``sys.argv``, as Lightning's DDP launcher does when it
    starts the other ranks by running the same command line again; ``--debug`` reaches those
    as ``LOG_LEVEL=debug``. ``sys.argv`` and ``$LOG_LEVEL`` are restored afterwards.

    Returns:
        0 when ``main`` returns, 2 for a bad argument, 1 for a file that cannot be read or
        written (``SystemExit`` from ``main`` passes through).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    saved, saved_level = sys.argv, os.environ.get("LOG_LEVEL")
    sys.argv = [sys.argv[0], *(a for a in argv if a != DEBUG_FLAG)]
    if debug:
        os.environ["LOG_LEVEL"] = "debug"
    try:
        main(None)
    except (ValueError, MisconfigurationException) as exc:
        if debug:
            raise
        print(_one_line(exc), file=sys.stderr, flush=True)
        return 2
    except OSError as exc:
        if debug or exc.errno not in _FILE_ERRORS:
            raise
        if not isinstance(exc, WriteError) and exc.filename is not None:
            exc = OSError(f"{exc.filename}: {exc.strerror}")
        print(_one_line(exc), file=sys.stderr, flush=True)
        return 1
    finally:
        sys.argv = saved
        if saved_level is None:
            os.environ.pop("LOG_LEVEL", None)
        else:
            os.environ["LOG_LEVEL"] = saved_level
    return 0
