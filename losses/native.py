"""The native top-K selection kernel (``csrc/top_k_select.c``): build, load, call.

``torch.topk`` on the CPU ranks each row with ``nth_element`` over (value, index) pairs and
returns the indices in no useful order. The topK losses rank 10% of 50,176 pixels per image on
every step, and that ranking, with the gather and scatter of the selected pixels that follow
it, was most of what the topK Dice added to the cost of plain CE. The C kernel selects by radix
select in O(n) per row and returns each row's indices in increasing order, so that the gather
and scatter walk memory forwards (see the header of the C file).

Build: on first use, the system C compiler (``$CC``, else ``cc``) compiles the one C file (well
under a second; no Python or torch headers) with OpenMP when it can, into a per-user cache
(``$LOSSES_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/topk-dice-template``, else
``~/.cache/topk-dice-template``) under a name that hashes the source, the compiler and the
flags; concurrent builds (DDP ranks, SLURM array tasks) each write a temporary file and rename
it into place. No ``-march=native``: the library runs on every machine of the same
architecture, so one cache can serve a cluster's nodes.

``$LOSSES_NATIVE`` chooses: ``auto`` (default) uses the kernel when it builds and otherwise
falls back to ``torch.topk`` with one warning; ``0`` never uses it (no warning); ``1`` requires
it (a build failure raises). The kernel serves float32 CPU tensors only; other dtypes and
devices (CUDA has its own radix select) take ``torch.topk``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

ENV_MODE = "LOSSES_NATIVE"
ENV_CACHE = "LOSSES_NATIVE_CACHE"
SOURCE = Path(__file__).parent / "csrc" / "top_k_select.c"
#: compile flags, with OpenMP first and without it if the compiler refuses ``-fopenmp``
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared")
OPENMP_FLAGS = ("-fopenmp",)
_MODES = ("auto", "0", "1")


class NativeBuildError(RuntimeError):
    """The C kernel could not be compiled or loaded (the message holds the compiler output)."""


def mode() -> str:
    """``$LOSSES_NATIVE``: ``"auto"`` (unset), ``"0"`` or ``"1"``.

    Raises:
        ValueError: any other value (named in the message).
    """
    value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"Expected ${ENV_MODE} to be one of {_MODES}, but got {value!r}")
    return value


def cache_dir() -> Path:
    """Where the built library lives (see the module docstring)."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "topk-dice-template"


def compiler() -> list[str]:
    """The C compiler command: ``$CC`` (split like a shell would), else ``cc``."""
    return shlex.split(os.environ.get("CC", "")) or ["cc"]


def library_path(flags: tuple[str, ...]) -> Path:
    """Cache path of the library built from the current source with ``compiler() + flags``."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), *compiler(), *flags, platform.machine(), sys.platform):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return cache_dir() / f"top_k_select-{digest.hexdigest()[:16]}.so"


def build(flags: tuple[str, ...]) -> Path:
    """Compile the kernel with ``flags`` into the cache (if not already there); its path.

    Raises:
        NativeBuildError: the compiler is missing or fails (its output in the message).
    """
    target = library_path(flags)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(fd)
    command = [*compiler(), *flags, str(SOURCE), "-o", tmp]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise NativeBuildError(f"cannot run the C compiler {command[0]!r}: {err}") from err
    if result.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        output = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise NativeBuildError(
            f"`{shlex.join(command)}` failed with exit status {result.returncode}: "
            + " | ".join(output)
        )
    os.replace(tmp, target)  # atomic: a concurrent build's reader sees a whole file
    return target


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    select = library.top_k_magnitude_rows_f32
    select.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    select.argtypes += [ctypes.c_void_p, ctypes.c_int]
    select.restype = ctypes.c_int
    library.top_k_select_has_openmp.restype = ctypes.c_int
    return library


@cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel, built on first call; None when disabled or (``auto``) unavailable.

    Raises:
        NativeBuildError: in mode ``1``, when neither build loads.
    """
    if mode() == "0":
        return None
    errors = []
    for flags in (FLAGS + OPENMP_FLAGS, FLAGS):
        try:
            return _load(build(flags))
        except (NativeBuildError, OSError) as err:
            errors.append(f"{' '.join(flags)}: {err}")
    message = "the native top-K kernel could not be built; " + "; ".join(errors)
    if mode() == "1":
        raise NativeBuildError(message)
    warnings.warn(
        f"{message}. The topK losses fall back to torch.topk (slower on the CPU); "
        f"set {ENV_MODE}=0 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


_disabled = False


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block the losses rank with ``torch.topk`` (to compare the two paths in one
    process: benchmarks, tests). Not thread-safe: it flips a module-level switch."""
    global _disabled
    before, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = before


def available() -> bool:
    """Whether the kernel is in use (built and loaded, not disabled by ``$LOSSES_NATIVE``)."""
    return _library() is not None


def has_openmp() -> bool:
    """Whether the loaded kernel selects rows in parallel (False when not available)."""
    library = _library()
    return library is not None and bool(library.top_k_select_has_openmp())


def top_k_magnitude_indices(scores: Tensor, keep: int) -> Tensor | None:
    """Indices ``(..., keep)`` int64 of the ``keep`` largest ``|scores|`` of each last-axis row,
    in increasing order, by the C kernel; None when the kernel does not apply (not a float32
    CPU tensor, ``keep`` outside ``[1, n]``, rows of 2^32 or more elements, the kernel
    unavailable or out of scratch memory), so that the caller falls back to ``torch.topk``.

    The selection is that of ``magnitude_key(scores).topk(keep)`` (:mod:`losses.topk`): every
    NaN above ``+inf``, ``-0.0`` with ``+0.0``; among scores tied at the threshold the lowest
    indices are kept. No gradient.
    """
    if scores.device.type != "cpu" or scores.dtype != torch.float32 or scores.ndim == 0:
        return None
    n = scores.shape[-1]
    if not 1 <= keep <= n or n >= 2**32:
        return None
    library = None if _disabled else _library()
    if library is None:
        return None
    rows = scores.detach().reshape(-1, n).contiguous()
    out = torch.empty(rows.shape[0], keep, dtype=torch.int64)
    if rows.shape[0] > 0:
        failed = library.top_k_magnitude_rows_f32(
            rows.data_ptr(), rows.shape[0], n, keep, out.data_ptr(), torch.get_num_threads()
        )
        if failed:
            return None
    return out.reshape(*scores.shape[:-1], keep)


def describe() -> str:
    """One line for logs and benchmarks: which top-K path the losses take on the CPU (builds
    the kernel if it is not built yet)."""
    library = _library()
    if library is None:
        return f"torch.topk (native kernel not in use, ${ENV_MODE}={mode()})"
    threads = "OpenMP" if has_openmp() else "one thread, no OpenMP"
    return f"native radix select ({threads}; {library._name})"


__all__ = [
    "ENV_CACHE",
    "ENV_MODE",
    "NativeBuildError",
    "available",
    "build",
    "cache_dir",
    "describe",
    "disabled",
    "has_openmp",
    "library_path",
    "mode",
    "top_k_magnitude_indices",
]
