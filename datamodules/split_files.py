"""Writing the HDF5 split files: split checks, fingerprints, case checks, the case writer.

The layout is documented in :mod:`datamodules.hdf5`; ``SliceDataModule.prepare_data``
(:mod:`datamodules.base`) drives the writing with these functions. The fingerprint of a
preparation is ``SHA-256(json(settings, split case lists, raw files' names/sizes/mtimes))``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.hdf5 import SPLITS
from datamodules.intensity import STORABLE
from datamodules.raw import CaseData, CaseSpec, check_finite

__all__ = [
    "PlainProgress",
    "check_case",
    "check_splits",
    "json_sha256",
    "load_ahead",
    "plan_fingerprint",
    "write_case",
]


class PlainProgress:
    """Plain preprocessing progress lines for logs (stdout not a terminal): one when the
    first case is done, then at most one every ``interval`` seconds, and one at the end."""

    def __init__(self, name: str, total: int, interval: float = 10.0) -> None:
        self.name, self.total, self.interval = name, total, interval
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def advance(self, what: str) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done not in (1, self.total) and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(
            f"[data] {self.name} preprocessing: {self.done}/{self.total} cases ({what}) | "
            f"{elapsed:.0f} s elapsed | ETA {eta:.0f} s",
            flush=True,
        )


def json_sha256(payload: Any) -> str:
    """SHA-256 hex digest of ``payload`` as sorted-key JSON (``str`` for other objects)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def check_splits(plan: dict[str, list[CaseSpec]]) -> None:
    """Every split non-empty; the test split disjoint from train and val."""
    for split in SPLITS:
        if not plan.get(split):
            raise ValueError(
                f"The {split!r} split is empty: every split needs at least one case "
                f"(check the split options and that raw_dir holds the listed cases)."
            )
    test = {c.case_id for c in plan["test"]}
    for split in ("train", "val"):
        both = sorted(test & {c.case_id for c in plan[split]})
        if both:
            raise ValueError(
                f"Cases {both} are in both the {split!r} and the 'test' split; the test "
                f"split must not overlap the others."
            )


def plan_fingerprint(
    settings: dict[str, Any], plan: dict[str, list[CaseSpec]], raw_dir: Path | None
) -> str:
    """SHA-256 of the settings, the split case lists and the raw files' names/sizes/mtimes
    (names relative to ``raw_dir`` where they lie under it)."""
    files: list[list[Any]] = []
    for split in SPLITS:
        for spec in plan[split]:
            for path in spec.files:
                st = path.stat()
                try:
                    name = str(path.relative_to(raw_dir)) if raw_dir else str(path)
                except ValueError:
                    name = str(path.resolve())
                files.append([split, spec.case_id, name, st.st_size, st.st_mtime_ns])
    payload = {
        "settings": settings,
        "splits": {s: [c.case_id for c in plan[s]] for s in SPLITS},
        "files": files,
    }
    return json_sha256(payload)


def check_case(case_id: str, case: CaseData, in_channels: int, num_classes: int) -> None:
    """Check a preprocessed case before it is written.

    Raises:
        ValueError: image not ``(in_channels, D, H, W)``, label shape not ``(D, H, W)``,
            non-finite intensities, or labels not uint8 in ``0..num_classes - 1``.
    """
    c = in_channels
    if case.image.ndim != 4 or case.image.shape[0] != c:
        raise ValueError(
            f"Case {case_id}: image has shape {case.image.shape}, expected ({c}, D, H, W)."
        )
    if case.label.shape != case.image.shape[1:]:
        raise ValueError(
            f"Case {case_id}: label shape {case.label.shape} does not match image shape "
            f"{case.image.shape[1:]} (D, H, W)."
        )
    check_finite(case.image, f"Case {case_id}: preprocessed image")
    if case.label.dtype != np.uint8 or int(case.label.max(initial=0)) >= num_classes:
        raise ValueError(
            f"Case {case_id}: label must be uint8 in 0..{num_classes - 1}, got dtype "
            f"{case.label.dtype} with max {case.label.max()}."
        )


def load_ahead(
    load: Callable[[CaseSpec], CaseData], specs: Iterable[CaseSpec], depth: int = 2
) -> Iterator[tuple[CaseSpec, CaseData]]:
    """``(spec, load(spec))`` for each spec, in order, while background threads already load
    the next ``depth`` cases (``depth=0``: one at a time, in the caller's thread).

    The caller writes case i while cases i+1..i+depth are read and preprocessed: file
    decoding (zlib, PNG), NumPy and HDF5's own I/O run without Python's lock, so reading
    overlaps writing, and on more cores the cases overlap each other. At most ``depth + 1``
    loaded cases are held at once. An exception raised by ``load`` (``KeyboardInterrupt``
    included) is raised here at its case's turn; when the caller stops early the loads not yet
    started are cancelled and the running ones are waited for.
    """
    if depth < 1:
        for spec in specs:
            yield spec, load(spec)
        return
    todo = iter(specs)
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="load-case") as pool:
        pending: deque[tuple[CaseSpec, Future[CaseData]]] = deque()

        def submit() -> None:
            spec = next(todo, None)
            if spec is not None:
                pending.append((spec, pool.submit(load, spec)))

        try:
            for _ in range(depth):
                submit()
            while pending:
                spec, future = pending.popleft()
                case = future.result()
                submit()
                yield spec, case
                del case
        finally:
            for _, future in pending:
                future.cancel()


def write_case(f: h5py.File, case_id: str, case: CaseData, compression: str | None) -> None:
    """Write one case as the group ``case_id`` of an open split file (layout: ``hdf5``): the
    image as float32, or in its raw small integer type (``intensity.STORABLE``) when the case
    carries the maps that normalize it (``attrs["intensity"]``)."""
    c, d, h, w = case.image.shape
    g = f.create_group(case_id)
    raw = case.image.dtype in STORABLE and "intensity" in case.attrs
    dtype = case.image.dtype if raw else np.float32
    for name, array, chunks in (
        ("image", np.ascontiguousarray(case.image, dtype=dtype), (c, 1, h, w)),
        ("label", np.ascontiguousarray(case.label, dtype=np.uint8), (1, h, w)),
    ):
        # every chunk is written at once below: skip HDF5's fill of new chunks
        dataset = g.create_dataset(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=chunks,
            compression=compression,
            fill_time="never",
        )
        if compression is None:
            # chunk by chunk, as stored: bypasses HDF5's chunk cache and type machinery
            # (``write_direct`` took 1.2-5x as long on 3 MB chunks, the time varying run to run)
            lead = (0,) * (array.ndim - 3)
            for z in range(d):
                chunk = np.ascontiguousarray(array[..., z, :, :])
                dataset.id.write_direct_chunk((*lead, z, 0, 0), chunk)
        else:
            dataset.write_direct(array)
    g.attrs["spacing"] = np.asarray(case.spacing, dtype=np.float64)
    g.attrs["affine"] = np.asarray(case.affine, dtype=np.float64)
    for key, value in case.attrs.items():
        g.attrs[key] = value
