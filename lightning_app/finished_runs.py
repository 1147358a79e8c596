"""``CKPT=last`` of ``make eval`` / ``make predict``: the newest *finished* run's checkpoint.

A fit that ends normally writes ``<run dir>/fit_complete.json`` (epochs, global step, image size,
finish time; :class:`lightning_app.checkpoints.CheckpointOnTerminate`). :func:`newest_finished_run`
takes, among ``logs/<dataset>/<loss>/*/``, the run whose record is newest, and reports every
newer run without one (stopped, still running, or a smoke test that failed) as skipped. A
checkpoint given by path is checked to be a complete ``torch.save`` file (its zip directory
reads), so a truncated file is named before any model is built.

``python -m lightning_app.finished_runs --ckpt last --logs logs/phantom/ce_topk_dice --for eval``
prints the checkpoint's path on stdout and the choice (run directory, epochs, image size) and
any skipped runs on stderr; it exits 2 with one line when there is nothing to use.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FinishedRun", "check_checkpoint_file", "newest_finished_run"]

# the names of lightning_app.checkpoints, spelled out so that choosing a run imports no torch
FIT_COMPLETE = "fit_complete.json"
LAST_NAME = "last.ckpt"


@dataclass(frozen=True)
class FinishedRun:
    """A run directory whose fit completed, with what its ``fit_complete.json`` records."""

    run_dir: Path
    checkpoint: Path
    epochs: int | None
    image_size: int | None
    finished: str

    def describe(self) -> str:
        epochs = f"{self.epochs} epoch" + ("" if self.epochs == 1 else "s")
        return f"{self.run_dir} (finished {self.finished}, {epochs}, image size {self.image_size})"


def _record(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / FIT_COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def newest_finished_run(logs: str | Path) -> tuple[FinishedRun | None, list[Path]]:
    """The newest finished run under ``logs`` (``logs/<dataset>/<loss>``) that has a
    ``checkpoints/last.ckpt``, and the run directories newer than it that were skipped
    because their fit did not finish (newest first)."""
    runs = [p.parent.parent for p in Path(logs).glob(f"*/checkpoints/{LAST_NAME}")]
    runs.sort(key=lambda d: (d / "checkpoints" / LAST_NAME).stat().st_mtime, reverse=True)
    finished = []
    for run in runs:
        record = _record(run)
        if record is not None:
            finished.append((str(record.get("finished", "")), run, record))
    if not finished:
        return None, runs
    stamp, run, record = max(finished, key=lambda item: item[0])
    chosen = FinishedRun(
        run_dir=run,
        checkpoint=run / "checkpoints" / LAST_NAME,
        epochs=record.get("epochs"),
        image_size=record.get("image_size"),
        finished=stamp,
    )
    newest = (chosen.checkpoint).stat().st_mtime
    skipped = [
        r
        for r in runs
        if _record(r) is None and (r / "checkpoints" / LAST_NAME).stat().st_mtime > newest
    ]
    return chosen, skipped


def check_checkpoint_file(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a complete ``torch.save`` file.

    ``torch.save`` writes a zip archive whose directory is at its end: a truncated file has
    none, which reading the directory detects without loading the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint file {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(
            f"{path} is not a complete checkpoint (truncated, or not written by torch.save): {exc}"
        ) from None


def _choose(ckpt: str, logs: str, command: str) -> Path:
    if ckpt != "last":
        check_checkpoint_file(ckpt)
        return Path(ckpt)
    chosen, skipped = newest_finished_run(logs)
    for run in skipped:
        print(f"make {command}: skipping {run} (its fit did not finish)", file=sys.stderr)
    if chosen is None:
        raise ValueError(
            f"no finished run in {logs}/ (no */{FIT_COMPLETE} beside a checkpoints/{LAST_NAME}); "
            "train first, or give CKPT=<path to .ckpt>"
        )
    check_checkpoint_file(chosen.checkpoint)
    print(f"make {command}: CKPT=last is {chosen.describe()}", file=sys.stderr)
    return chosen.checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_app.finished_runs", description=__doc__, allow_abbrev=False
    )
    parser.add_argument("--ckpt", required=True, help="'last' or the path of a .ckpt file")
    parser.add_argument("--logs", required=True, help="logs/<dataset>/<loss> (for --ckpt last)")
    parser.add_argument("--for", dest="command", default="eval", help="command named in lines")
    args = parser.parse_args(argv)
    try:
        print(_choose(args.ckpt, args.logs, args.command))
    except ValueError as exc:
        print(f"make {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
