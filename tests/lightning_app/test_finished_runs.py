"""``CKPT=last`` takes the newest finished run, skips unfinished ones, and names bad files.

One real tiny fit gives a run directory with its ``fit_complete.json``; copies of it make the
other runs (a later run stopped mid-epoch: its ``last.ckpt`` without the record).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_app import checkpoints, finished_runs
from lightning_app.cli import main
from lightning_app.finished_runs import check_checkpoint_file, newest_finished_run
from tests.conftest import PYTHON, REPO


def _choose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "-m", "lightning_app.finished_runs", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def finished_run(tiny_cli_args, tiny_env: Path) -> Path:
    main(["fit", *tiny_cli_args()])
    return tiny_env / "run"


def test_names_agree_with_the_checkpoint_module() -> None:
    assert finished_runs.FIT_COMPLETE == checkpoints.FIT_COMPLETE
    assert finished_runs.LAST_NAME == checkpoints.LAST_NAME


def test_last_is_the_newest_finished_run(finished_run: Path, tmp_path: Path) -> None:
    record = json.loads((finished_run / "fit_complete.json").read_text())
    assert record["epochs"] == 1 and record["global_step"] == 4 and record["image_size"] == 64

    logs = tmp_path / "logs" / "phantom" / "ce_topk_dice"
    old, done, stopped = logs / "a-old", logs / "b-done", logs / "c-stopped"
    for run in (old, done, stopped):
        shutil.copytree(finished_run, run)
    (stopped / "fit_complete.json").unlink()  # stopped mid-epoch: a checkpoint, no record
    record_old = {**record, "finished": "2000-01-01T00:00:00", "epochs": 12}
    (old / "fit_complete.json").write_text(json.dumps(record_old))
    last = [run / "checkpoints" / "last.ckpt" for run in (old, done, stopped)]
    for i, path in enumerate(last):  # file times in the order the runs were made
        os.utime(path, (1_000_000 + i, 1_000_000 + i))

    chosen, skipped = newest_finished_run(logs)
    assert chosen is not None and chosen.run_dir == done and skipped == [stopped]

    out = _choose("--ckpt", "last", "--logs", str(logs), "--for", "predict")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(done / "checkpoints" / "last.ckpt")
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"make predict: skipping {stopped} (its fit did not finish)",
        f"make predict: CKPT=last is {done} (finished {record['finished']}, 1 epoch, "
        "image size 64)",
    ]


def test_no_finished_run_is_one_line(tmp_path: Path) -> None:
    out = _choose("--ckpt", "last", "--logs", str(tmp_path / "logs" / "phantom" / "ce"))
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no finished run in" in out.stderr and "CKPT=<path to .ckpt>" in out.stderr


def test_truncated_checkpoint_is_named(finished_run: Path, tmp_path: Path) -> None:
    good = finished_run / "checkpoints" / "last.ckpt"
    check_checkpoint_file(good)  # a complete torch.save file passes
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.ckpt is not a complete checkpoint"):
        check_checkpoint_file(bad)
    out = _choose("--ckpt", str(bad), "--logs", str(tmp_path), "--for", "eval")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith(f"make eval: {bad} is not a complete checkpoint")
