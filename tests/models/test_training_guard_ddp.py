"""The training guard under real 2-process DDP (gloo, CPU): a NaN on one rank stops both ranks
at the same step, each naming it, and the last good checkpoint stays as it was."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# 16 slices, batch 2 per rank (8 steps): the NaN in slice 7 reaches one rank, at a step that
# the distributed sampler decides.
PATTERN = (
    r"(?P<what>[^\[]+) \[global step (?P<step>\d+), epoch 0, batch (?P<batch>\d+), "
    r"cases (?P<cases>\[[^\]]*\])\]"
)
SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys, traceback
    sys.path.insert(0, {repo!r})
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, Dataset

    from losses import build_loss
    from models import SegmentationModel

    out = {out!r}

    class Slices(Dataset):
        def __init__(self):
            gen = torch.Generator().manual_seed(0)
            self.images = torch.rand(16, 1, 32, 32, generator=gen)
            self.images[7, 0, 5, 7] = float("nan")
            self.labels = torch.randint(0, 3, (16, 32, 32), generator=gen)

        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {{"image": self.images[i], "label": self.labels[i],
                    "case": f"case{{i // 4 + 1:04d}}", "slice": i % 4}}

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Slices(), batch_size=2, shuffle=False)

    class Digest(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            # last.ckpt as it stands before every step (the last one written is compared)
            if batch_idx > 0 and trainer.is_global_zero:
                data = open(os.path.join(out, "ckpt", "last.ckpt"), "rb").read()
                open(os.path.join(out, "digest_before"), "w").write(
                    hashlib.sha256(data).hexdigest())

    model = SegmentationModel(
        loss=build_loss("ce_topk_dice", validate_args=False), in_channels=1, num_classes=3,
        image_size=32,
        model_kwargs={{"decoder_channels": (16, 8, 8, 4, 4)}},  # every parameter used (DDP)
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=out,
        callbacks=[ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True,
                                   every_n_train_steps=1), Digest()],
    )
    rank = os.environ.get("LOCAL_RANK", "0")
    try:
        trainer.fit(model, Data())
    except FloatingPointError as err:
        open(os.path.join(out, f"rank{{rank}}.txt"), "w").write(str(err))
        sys.exit(3)
    open(os.path.join(out, f"rank{{rank}}.txt"), "w").write("finished")
    """
)


def test_nan_on_one_rank_stops_both_ranks_at_the_same_step(tmp_path: Path) -> None:
    script = tmp_path / "fit_with_nan.py"
    script.write_text(SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a rank left waiting in a collective would hang here
    )
    assert proc.returncode == 3, proc.stderr[-4000:]
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    found = [re.match(PATTERN, m) for m in messages]
    assert all(found), messages
    own = [f for f in found if f["what"] == "Non-finite training loss (nan)"]
    other = [f for f in found if f["what"] != own[0]["what"]] if own else []
    # exactly one rank saw the NaN, and its batch holds slice 7 (case0002 slice 3) ...
    assert len(own) == 1 and "'case0002 slice 3'" in own[0]["cases"], messages
    # ... and the other rank stopped at the same step, saying the failure happened elsewhere
    assert other[0]["what"] == "Non-finite training loss or loss error on another process"
    assert "'case0002 slice 3'" not in other[0]["cases"]
    assert own[0]["step"] == other[0]["step"] and own[0]["batch"] == other[0]["batch"]
    step = int(own[0]["step"])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert (tmp_path / "digest_before").read_text() == hashlib.sha256(last.read_bytes()).hexdigest()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == step  # the good steps before the bad one
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
