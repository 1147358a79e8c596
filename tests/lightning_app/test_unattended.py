"""Runs left alone: plain progress lines in logs, W&B that never stops a run, evaluations that
never touch the training run, batch_size=1 with BatchNorm, evaluation from prepared files."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from datamodules import SynapseDataModule
from lightning_app.callbacks.progress_bar import ProgressBar, _clock
from lightning_app.cli import SegmentationCLI, check_batch_norm_batch_size
from lightning_app.loggers import WandbLogger, wandb_server_reachable
from tests.conftest import PYTHON, REPO, tiny_args
from tests.datamodules.conftest import make_synapse
from tests.lightning_app.wandb_records import history_and_summary


def _closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> hex digest). Symbolic links
    are left out: W&B links ``logs/debug-core.log`` to its service's shared log outside the
    run, which every later W&B run of the machine appends to."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
def test_clock_format() -> None:
    assert _clock(0) == "0:00" and _clock(61.4) == "1:01" and _clock(3725) == "1:02:05"
    assert _clock(float("nan")) == "?"


def test_progress_bar_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="Expected argument `interval` to be > 0, but got 0"):
        ProgressBar(interval=0)


def test_rich_bar_counts_epochs_from_one() -> None:
    bar = ProgressBar(plain=False)
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[bar], enable_checkpointing=False)
    bar._trainer = trainer  # set by Lightning at setup
    assert bar._get_train_description(0).strip() == "Epoch 1/2"
    assert bar._get_train_description(1).strip() == "Epoch 2/2"
    assert trainer.progress_bar_callback is bar


def test_plain_lines_every_interval_and_per_epoch(
    tiny_cli_args: Callable[..., list[str]],
) -> None:
    lines: list[str] = []
    stamps: list[float] = []

    def record(line: str) -> None:
        lines.append(line)
        stamps.append(time.monotonic())

    cli = SegmentationCLI(run=False, args=tiny_cli_args(trainer__max_epochs=2))
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, ProgressBar)
    bar.plain_setting, bar.interval, bar._print = True, 1e-6, record  # a line every step
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    steps = [ln for ln in lines if ln.startswith("[train] epoch") and " step " in ln]
    # 2 epochs x 4 steps of the tiny phantom, one line each (interval ~0)
    assert len(steps) == 8, lines
    assert steps[0].startswith("[train] epoch 1/2 step 1/4 | loss ")
    assert "slices/s" in steps[0] and "epoch ETA" in steps[0] and "fit ETA" in steps[0]
    done = [ln for ln in lines if " done in " in ln]
    assert [d.split(" done")[0] for d in done] == ["[train] epoch 1/2", "[train] epoch 2/2"]
    val = [ln for ln in lines if ln.startswith("[val]   epoch")]
    assert len(val) == 2 and "Dice mean" in val[0]
    assert all(f"{key} " in val[0] for key in cli.model.class_keys)
    # the validation line of epoch 1 comes before the epoch's end line
    assert lines.index(val[0]) < lines.index(done[0])


@pytest.mark.slow
def test_non_tty_training_log_grows_during_training(tmp_path: Path) -> None:
    """``fit > log``: progress lines appear in the file while the process still trains."""
    log = tmp_path / "train.log"
    args = tiny_args(tmp_path)
    args += ["--trainer.max_epochs=3", "--data.progress=true"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    seen_while_running: list[str] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "lightning_app", "fit", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                text = log.read_text()
                if "[train] epoch 1/3 done" in text and "[val]   epoch 1/3" in text:
                    seen_while_running.append(text)
                    break
                time.sleep(0.05)
        finally:
            rc = proc.wait(timeout=300)
    assert rc == 0, log.read_text()[-3000:]
    assert seen_while_running, "no epoch line reached the log before the process ended"
    final = log.read_text()
    assert "[train] epoch 3/3 done" in final and "Dice mean" in final
    assert "[data] phantom preprocessing: 4/4 cases" in final  # plain preprocessing lines
    assert "━" not in final  # no rich bar in a log file


# --------------------------------------------------------------------------------------------
# W&B never stops a run
# --------------------------------------------------------------------------------------------
def test_probe_sees_a_closed_port_as_unreachable() -> None:
    t0 = time.monotonic()
    assert not wandb_server_reachable(f"http://127.0.0.1:{_closed_port()}", timeout=5)
    assert time.monotonic() - t0 < 5


def test_unreachable_wandb_server_continues_offline(
    tiny_cli_args: Callable[..., list[str]],
    tiny_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # a key is set and WANDB_MODE is unset (online), but the server cannot be reached
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match="continues OFFLINE.*wandb sync"):
        cli = SegmentationCLI(args=["fit", *tiny_cli_args()])
    assert time.monotonic() - t0 < 30 + 30  # fallback within 30 s, plus the tiny fit
    (wb,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert wb.mode == "offline" and "cannot be reached" in (wb.fallback_reason or "")
    assert cli.trainer.state.finished and (tiny_env / "run" / "checkpoints" / "last.ckpt").is_file()
    (wb_dir,) = (tiny_env / "run" / "wandb").glob("offline-run-*")
    history, _ = history_and_summary(wb_dir)
    assert any("val/dice/mean" in row for row in history)
    assert "wandb sync" in capsys.readouterr().out  # the end-of-fit summary


def test_wandb_failure_mid_run_never_stops_training(
    tiny_cli_args: Callable[..., list[str]],
    tiny_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wandb.sdk.wandb_run as wandb_run

    calls = {"n": 0}
    real_log = wandb_run.Run.log

    def failing_log(self, *args, **kwargs):  # the W&B service dies after the first record
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("wandb service unreachable")
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(wandb_run.Run, "log", failing_log)
    with pytest.warns(UserWarning, match="W&B failed during .*training goes on"):
        cli = SegmentationCLI(args=["fit", *tiny_cli_args()])
    assert cli.trainer.state.finished and cli.trainer.current_epoch == 1
    (wb,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert wb.failed and "ConnectionError" in wb.failed
    metrics = (tiny_env / "run" / "csv" / "version_0" / "metrics.csv").read_text()
    assert metrics.count("\n") > 4 and "val/dice/mean" in metrics.splitlines()[0]


# --------------------------------------------------------------------------------------------
# evaluation is a run of its own and never rewrites the training run
# --------------------------------------------------------------------------------------------
def test_eval_under_slurm_leaves_the_training_run_byte_identical(
    tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for var in ("SLURM_NTASKS", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    fit_args = [a for a in tiny_args(tiny_env) if not a.startswith("--trainer.default_root_dir")]
    SegmentationCLI(args=["fit", *fit_args])
    run = tiny_env / "logs" / "phantom" / "ce_topk_dice" / "slurm-4242"
    assert (run / "config.yaml").is_file()
    before = _digest(run)
    # make eval: the run's config, its checkpoint, --trainer.default_root_dir=null
    test = SegmentationCLI(
        args=[
            "test",
            f"--config={run / 'config.yaml'}",
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "--trainer.default_root_dir=null",
        ]
    )
    eval_dir = Path(test.run_dir).resolve()
    assert eval_dir.parent == run.parent and eval_dir.name.startswith("slurm-4242-test-")
    assert (eval_dir / "per_case.csv").is_file() and (eval_dir / "config.yaml").is_file()
    assert _digest(run) == before
    # a directory given explicitly that holds the training run: its config stays untouched
    SegmentationCLI(
        args=[
            "test",
            f"--config={run / 'config.yaml'}",
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            f"--trainer.default_root_dir={run}",
        ]
    )
    after = _digest(run)
    assert [n for n, digest in before.items() if after[n] != digest] == []
    assert "config-test.yaml" in after
    # ... and the README's resume command still parses the training config
    with pytest.raises(SystemExit) as parsed:
        SegmentationCLI(
            args=["fit", f"--config={run / 'config.yaml'}", "--ckpt_path=last", "--print_config"]
        )
    assert parsed.value.code == 0


# --------------------------------------------------------------------------------------------
# batch_size = 1 with BatchNorm
# --------------------------------------------------------------------------------------------
def test_batch_size_one_with_batchnorm_is_refused_before_the_run_directory(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path
) -> None:
    with pytest.raises(ValueError, match="Expected argument `data.batch_size` to be >= 2"):
        SegmentationCLI(args=["fit", *tiny_cli_args(data__batch_size=1)])
    assert not (tiny_env / "run").exists()


def test_batch_size_one_without_batchnorm_is_allowed() -> None:
    class DM:
        batch_size = 1

    check_batch_norm_batch_size(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), DM())


def test_a_last_training_batch_of_one_slice_is_dropped(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path
) -> None:
    # the tiny phantom has 2 x 8 = 16 training slices: batch 5 leaves a last batch of 1
    cli = SegmentationCLI(
        args=["fit", *tiny_cli_args(data__batch_size=5, trainer__limit_val_batches=1)]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 3  # 16 // 5, the single-slice batch dropped
    assert len(cli.datamodule.train_dataloader()) == 3
    cli.datamodule.batch_size = 4  # 16 % 4 == 0: nothing to drop
    assert cli.datamodule.train_dataloader().drop_last is False


# --------------------------------------------------------------------------------------------
# evaluation from the prepared split files when the raw data is gone or changed
# --------------------------------------------------------------------------------------------
def test_evaluation_uses_prepared_files_when_raw_data_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_synapse(tmp_path)
    kw = {
        "train_cases": [5, 6],
        "val_cases": [7],
        "test_cases": [1],
        "data_dir": str(tmp_path / "h5"),
        "raw_dir": str(tmp_path / "raw"),
        "num_workers": 0,
        "image_size": 16,
        "progress": False,
    }
    dm = SynapseDataModule(**kw)
    dm.prepare_data()
    test_file = tmp_path / "h5" / "test.h5"
    with h5py.File(test_file, "r") as f:
        assert f.attrs["settings_fingerprint"] == dm.settings_fingerprint()
    mtime = test_file.stat().st_mtime_ns
    # break the raw release
    for p in sorted((tmp_path / "raw").rglob("*.nii.gz"))[:1]:
        p.write_bytes(b"")
    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    trainer.state.fn = TrainerFn.TESTING
    dm = SynapseDataModule(**kw)
    dm.trainer = trainer
    dm.prepare_data()
    out = capsys.readouterr().out
    assert "raw data has changed" in out and str(test_file) in out
    assert test_file.stat().st_mtime_ns == mtime
    # the raw folder removed altogether
    shutil.rmtree(tmp_path / "raw")
    dm.prepare_data()
    assert "raw data cannot be read" in capsys.readouterr().out
    dm.setup("test")
    assert len(dm.test_set) >= 1
    # other settings (another image size is fine, it is not preprocessing; compression is)
    other = SynapseDataModule(**{**kw, "compression": "lzf"})
    other.trainer = trainer
    with pytest.raises(FileNotFoundError, match="raw_dir"):
        other.prepare_data()
    # training still needs the raw data
    trainer.state.fn = TrainerFn.FITTING
    with pytest.raises(FileNotFoundError, match="raw_dir"):
        dm.prepare_data()


# --------------------------------------------------------------------------------------------
# --save_predictions writes the input's qform / sform codes, as make predict does
# --------------------------------------------------------------------------------------------
def test_saved_predictions_carry_the_inputs_qform_and_sform_codes(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np
    from torch.utils.data import default_collate

    from datamodules.hdf5 import VolumeDataset
    from lightning_app.reports import write_prediction

    make_synapse(tmp_path)
    image_path = tmp_path / "raw" / "RawData" / "Training" / "img" / "img0001.nii.gz"
    raw = nib.load(str(image_path))
    sform = raw.affine.copy()
    qform = sform.copy()
    qform[:3, 3] += [1.0, -2.0, 3.0]  # a qform that differs from the sform
    out = nib.Nifti1Image(np.asarray(raw.dataobj), sform)
    out.set_sform(sform, code=4)  # MNI
    out.set_qform(qform, code=1)  # scanner
    nib.save(out, str(image_path))
    dm = SynapseDataModule(
        data_dir=str(tmp_path / "h5"),
        raw_dir=str(tmp_path / "raw"),
        train_cases=[5, 6],
        val_cases=[7],
        test_cases=[1],
        num_workers=0,
        image_size=16,
        progress=False,
    )
    dm.prepare_data()
    dataset = VolumeDataset(dm.split_path("test"))
    batch = default_collate([dataset[0]])
    pred = batch["label"][0].numpy()
    written = nib.load(str(write_prediction(pred, batch, tmp_path / "pred.nii.gz")))
    dataset.close()
    assert int(written.header["sform_code"]) == 4 and int(written.header["qform_code"]) == 1
    np.testing.assert_allclose(written.get_sform(), sform, atol=1e-5)
    np.testing.assert_allclose(written.get_qform(), qform, atol=1e-4)
    assert written.shape == raw.shape  # the input's voxel grid
