"""User mistakes get one line, before anything is created; ``--debug`` keeps the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest

from lightning_app.cli import SegmentationCLI, main
from lightning_app.errors import run_reporting_errors
from lightning_app.preflight import warn_slow_bf16
from tests.conftest import REPO

TOPK = "--model.loss.init_args.terms.topk_dice.init_args.k"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (f"{TOPK}=0", "error: Expected argument `k` to be in (0, 100], but got 0"),
        (f"{TOPK}=150", "error: Expected argument `k` to be in (0, 100], but got 150"),
        ("--data.batch_size=0", "error: Expected argument `batch_size` to be an int >= 1, got 0"),
        (
            "--model.arch=FPN --data.image_size=100",
            "error: Expected argument `data.image_size` (100) to suit `model.arch` (FPN)",
        ),
    ],
    ids=["k=0", "k=150", "batch_size=0", "FPN-100"],
)
def test_bad_argument_is_one_line_and_creates_nothing(
    tiny_cli_args: Callable[..., list[str]],
    tiny_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    override: str,
    expected: str,
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning_app"])
    status = run_reporting_errors(main, ["fit", *tiny_cli_args(), *override.split()])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and lines[0].startswith(expected), err
    assert "Traceback" not in err and "--debug or LOG_LEVEL=debug" in lines[0]
    assert not (tiny_env / "run").exists()


@pytest.mark.parametrize("how", ["--debug", "LOG_LEVEL=debug"])
def test_debug_keeps_the_traceback(
    tiny_cli_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning_app"])
    argv = ["fit", *tiny_cli_args(), f"{TOPK}=0"]
    if how == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("LOG_LEVEL", "debug")
    with pytest.raises(ValueError, match="Expected argument `k`"):
        run_reporting_errors(main, argv)


def test_abbreviated_flag_is_refused(tiny_cli_args: Callable[..., list[str]]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        SegmentationCLI(args=["fit", *tiny_cli_args(), "--trainer.max_epoch=1"], run=False)
    assert exit_info.value.code == 2


def test_bf16_on_a_cpu_without_it_warns_once() -> None:
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False)
    with pytest.warns(UserWarning, match="slower than 32-true"):
        assert warn_slow_bf16(trainer, native=False)
    fp32 = L.Trainer(accelerator="cpu", logger=False)  # Lightning warns here where srun exists
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_slow_bf16(trainer, native=True)
        assert not warn_slow_bf16(fp32, native=False)


@pytest.mark.parametrize(
    ("make_vars", "expected"),
    [
        (["train", "LOSS=topk_dic"], "unknown LOSS 'topk_dic'; valid names: ce ce_dice"),
        (["compare", "LOSSES=ce bad"], "unknown LOSS 'bad'; valid names: ce ce_dice"),
        (["eval", "DATASET=synaps"], "unknown DATASET 'synaps'; valid names: acdc msseg2"),
    ],
)
def test_make_lists_the_valid_names(make_vars: list[str], expected: str) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", *make_vars], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_make_eval_names_a_truncated_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(b"PK\x03\x04 a zip archive cut short")
    done = subprocess.run(
        ["make", "--no-print-directory", "eval", f"CKPT={bad}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"make eval: {bad} is not a complete checkpoint" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_command_line_stays_in_sys_argv_for_lightnings_ddp_launcher() -> None:
    """Lightning starts the other DDP ranks by running ``sys.argv`` again: while the command
    runs, ``sys.argv`` holds its arguments (``--debug`` as ``LOG_LEVEL=debug``); afterwards
    both are as before."""
    from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

    seen = []

    def command(args: list[str] | None) -> None:
        seen.append((args, list(_basic_subprocess_cmd())[-2:], os.environ.get("LOG_LEVEL")))

    before, level = list(sys.argv), os.environ.get("LOG_LEVEL")
    assert run_reporting_errors(command, ["fit", "--debug", "--trainer.devices=2"]) == 0
    assert seen == [(None, ["fit", "--trainer.devices=2"], "debug")]
    assert sys.argv == before and os.environ.get("LOG_LEVEL") == level
