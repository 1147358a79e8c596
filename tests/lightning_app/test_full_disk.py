"""A fit onto a full filesystem stops with one line naming the file, and leaves no truncated file.

A tmpfs of about one and a half checkpoints is mounted (root only; skipped otherwise) and a
tiny phantom fit writes its run directory there: the first checkpoint fits, the next one does
not. Every checkpoint left behind must load, and no temporary file may remain.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_app.cli import SegmentationCLI
from tests.conftest import PYTHON, tiny_args


def _checkpoint_bytes(tmp_path: Path) -> int:
    """About one checkpoint of the tiny run: float32 weights and AdamW's two moments."""
    cli = SegmentationCLI(run=False, args=tiny_args(tmp_path) + ["--trainer.logger=false"])
    return sum(p.numel() for p in cli.model.parameters()) * 4 * 3


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    size = int(1.5 * _checkpoint_bytes(tmp_path))
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount, size
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_fit_onto_a_full_disk(tmp_path: Path, small_fs: tuple[Path, int]) -> None:
    mount, size = small_fs
    run = mount / "run"
    args = [a for a in tiny_args(tmp_path) if not a.startswith("--trainer.default_root_dir")]
    args += [f"--trainer.default_root_dir={run}", "--trainer.max_epochs=3"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("LIGHTNING_APP_RUN_NAME", None)
    done = subprocess.run(
        [str(PYTHON), "-m", "lightning_app", "fit", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write {run / 'checkpoints'}/"), errors

    files = [p for p in run.rglob("*") if p.is_file()]
    assert [p.name for p in files if ".tmp" in p.name] == []
    checkpoints = [p for p in files if p.suffix == ".ckpt"]
    assert checkpoints, "not even the first checkpoint was written"
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert "state_dict" in state and "optimizer_states" in state
    assert sum(p.stat().st_size for p in checkpoints) <= size
    assert not (run / "fit_complete.json").exists()
