"""``make eval``: the CLI's ``test`` on a trained checkpoint; metrics checked against medpy on
the saved predictions, the transunet protocol through the model's test loop, DDP exactness."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary

from lightning_app.cli import SegmentationCLI
from tests.conftest import CONFIGS, PYTHON, REPO
from tests.lightning_app.wandb_records import history_and_summary

#: 3 test volumes of 8 slices of 40 x 48 (not the training size 32: inference resizes)
DATA = {
    "num_train": 2,
    "num_val": 1,
    "num_test": 3,
    "volume_shape": "[8, 40, 48]",
    "image_size": 32,
    "batch_size": 4,
    "num_workers": 0,
    "progress": "false",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One tiny fit; its run directory follows the CLI layout logs/<dataset>/<loss>/<run>."""
    root = tmp_path_factory.mktemp("eval")
    run = root / "logs" / "phantom" / "ce_topk_dice" / "fit"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # offline, not disabled: a disabled W&B logger is left out of the saved config.yaml
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DIR", str(root))
        mp.delenv("LIGHTNING_APP_RUN_NAME", raising=False)
        args = [
            "fit",
            f"--config={CONFIGS / 'base.yaml'}",
            f"--config={CONFIGS / 'data' / 'phantom.yaml'}",
            f"--config={CONFIGS / 'loss' / 'ce_topk_dice.yaml'}",
            f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
            f"--data.data_dir={root / 'phantom'}",
            *(f"--data.{k}={v}" for k, v in DATA.items()),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={run}",
        ]
        SegmentationCLI(args=args)
    yield {"root": root, "run": run, "ckpt": run / "checkpoints" / "last.ckpt"}


def _test_args(trained: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "test",
        f"--config={trained['run'] / 'config.yaml'}",
        f"--ckpt_path={trained['ckpt']}",
        f"--trainer.default_root_dir={out}",
        *extra,
    ]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _labels(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Ground truth and spacing of each test case, read straight from the HDF5 file."""
    with h5py.File(root / "phantom" / "test.h5", "r") as f:
        return {c: (f[c]["label"][...], np.asarray(f[c].attrs["spacing"])) for c in f}


def _check_against_medpy(
    rows: list[dict[str, str]], pred_dir: Path, truth: dict, protocol: str
) -> int:
    """Compare every row with medpy on the saved prediction; returns rows with both masks."""
    checked = 0
    for row in rows:
        label, spacing = truth[row["case"]]
        pred = np.asarray(nib.load(str(pred_dir / f"{row['case']}.nii.gz")).dataobj)
        assert pred.shape == label.shape
        c = int(row["label"])
        p, g = pred == c, label == c
        if p.any() and g.any():
            sp = None if protocol == "transunet" else spacing
            assert float(row["dice"]) == pytest.approx(binary.dc(p, g), rel=1e-9)
            assert float(row["iou"]) == pytest.approx(binary.jc(p, g), rel=1e-9)
            assert float(row["precision"]) == pytest.approx(binary.precision(p, g), rel=1e-9)
            assert float(row["recall"]) == pytest.approx(binary.recall(p, g), rel=1e-9)
            assert float(row["hd95"]) == pytest.approx(binary.hd95(p, g, voxelspacing=sp), rel=1e-9)
            checked += 1
        elif protocol == "default":
            assert math.isnan(float(row["hd95"]))
        else:  # transunet: GT empty & prediction -> 1, empty prediction -> 0, HD95 0
            assert float(row["dice"]) == (1.0 if p.any() else 0.0)
            assert float(row["hd95"]) == 0.0
        assert row["gt_empty"] == str(int(not g.any()))
        assert row["pred_empty"] == str(int(not p.any()))
    return checked


def test_eval_writes_reports_checked_against_medpy(
    trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = trained["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(root))
    out = root / "eval_default"
    cli = SegmentationCLI(args=_test_args(trained, out, "--save_predictions"))
    rows = _read_csv(out / "per_case.csv")
    truth = _labels(root)
    cases = sorted(truth)
    names = cli.model.class_names[1:]
    assert [(r["index"], r["case"], r["class"]) for r in rows] == [
        (str(i), case, name) for i, case in enumerate(cases) for name in names
    ]
    assert _check_against_medpy(rows, out / "predictions", truth, "default") >= 3
    # logged means: nanmean over cases per class, then over classes (hand computation)
    per_class = [np.nanmean([float(r["dice"]) for r in rows if r["class"] == n]) for n in names]
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/dice/mean"]) == pytest.approx(np.nanmean(per_class), rel=1e-6)
    key = cli.model.class_keys[1]
    assert float(metrics[f"test/dice/{key}"]) == pytest.approx(per_class[0], rel=1e-6)
    # summary.md: poster table for the phantom (label order), named after the loss preset
    md = (out / "summary.md").read_text()
    assert md.startswith("# Test results: phantom, ce_topk_dice")
    header = next(line for line in md.splitlines() if line.startswith("| Loss functions"))
    assert header == "| " + " | ".join(["Loss functions", "mDice", "mIoU", *names]) + " |"
    assert "empty-mask protocol `default`" in md and "HD95 (mm)" in md
    assert "## Empty masks" in md
    printed = capsys.readouterr().out
    assert str((out / "summary.md").resolve()) in printed
    assert str((out / "per_case.csv").resolve()) in printed
    # W&B: per-class test metrics and the per-case table
    (wb_dir,) = (out / "wandb").glob("offline-run-*")
    history, _ = history_and_summary(wb_dir)
    keys = set().union(*history)
    assert {"test/dice/mean", f"test/hd95/{key}", "test/per_case/_type"} <= keys


def test_transunet_protocol_from_the_command_line_through_the_test_loop(
    trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = trained["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = root / "eval_transunet"
    cli = SegmentationCLI(
        args=_test_args(
            trained, out, "--model.test_protocol=transunet", "--report.save_predictions=true"
        )
    )
    # the checkpoint's hyperparameters did not override the command line
    assert cli.model.test_evaluator.protocol == "transunet"
    rows = _read_csv(out / "per_case.csv")
    assert not any(math.isnan(float(r[m])) for r in rows for m in ("dice", "hd95", "recall"))
    assert _check_against_medpy(rows, out / "predictions", _labels(root), "transunet") >= 3
    md = (out / "summary.md").read_text()
    assert "empty-mask protocol `transunet`" in md and "HD95 (voxels)" in md


def _subprocess_test(trained: dict[str, Path], out: Path, *extra: str) -> str:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",  # same threads in both runs: identical float reductions
        "PYTHONPATH": str(REPO),
    }
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    proc = subprocess.run(
        [str(PYTHON), "-m", "lightning_app", *_test_args(trained, out, *extra)],
        cwd=trained["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_ddp_per_case_table_equals_one_process(trained: dict[str, Path]) -> None:
    root = trained["root"]
    one, two = root / "ddp1", root / "ddp2"
    common = ("--trainer.accelerator=cpu", "--report.save_predictions=true")
    _subprocess_test(trained, one, *common, "--trainer.devices=1")
    printed = _subprocess_test(
        trained, two, *common, "--trainer.devices=2", "--trainer.strategy=ddp"
    )
    # 3 cases on 2 processes: the sampler repeats one case; it is counted once
    a, b = (one / "per_case.csv").read_bytes(), (two / "per_case.csv").read_bytes()
    assert a == b
    rows = _read_csv(two / "per_case.csv")
    assert sorted({r["index"] for r in rows}) == ["0", "1", "2"]
    assert (one / "summary.md").read_text() == (two / "summary.md").read_text()
    assert str((two / "summary.md").resolve()) in printed
    for case in sorted(p.name for p in (one / "predictions").iterdir()):
        np.testing.assert_array_equal(
            np.asarray(nib.load(str(one / "predictions" / case)).dataobj),
            np.asarray(nib.load(str(two / "predictions" / case)).dataobj),
        )
    metrics = json.dumps(sorted(p.name for p in (two / "predictions").iterdir()))
    assert metrics.count(".nii.gz") == 3
