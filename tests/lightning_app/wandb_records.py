"""Read the records of an offline W&B run (``run-<id>.wandb``) without the W&B service.

The file is W&B's append-only record log: a 7-byte header (``:W&B``, uint16 magic 0xBEE1,
version byte), then 32 KiB blocks of chunks, each ``crc32 (4) | length (uint16) | type (1) |
data``, with type FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block's tail shorter than a chunk header
is zero padding. Each reassembled record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32 * 1024
_HEADER = 7


def read_records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B record log")
    pos, records, pending = _HEADER, [], b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def finished_records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The records of the offline run in ``run_dir`` once its final ``exit`` record is written.

    W&B 0.31 may return from ``run.finish()`` before its service has flushed the record log,
    so this polls until the log is complete (a partly written log may not parse yet).
    """
    deadline = time.monotonic() + timeout
    while True:
        files = list(Path(run_dir).glob("run-*.wandb"))
        try:
            records = read_records(files[0]) if len(files) == 1 else []
        except Exception:  # a record cut off mid-write: try again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"No complete W&B record log in {run_dir} after {timeout} s")
        time.sleep(0.2)


def history_and_summary(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(history rows, summary)`` of the offline run in ``run_dir`` (``offline-run-*``)."""
    history, summary = [], {}
    for rec in finished_records(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    return history, summary


def run_meta(run_dir: Path) -> dict[str, Any]:
    """``{"id", "project", "group", "tags", "display_name"}`` of the run record."""
    for rec in finished_records(run_dir):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            return {
                "id": r.run_id,
                "project": r.project,
                "group": r.run_group,
                "tags": list(r.tags),
                "display_name": r.display_name,
            }
    raise ValueError(f"no run record in {run_dir}")
