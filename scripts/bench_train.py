"""The loss's share of a training step, and the training loop's throughput (``make bench-train``).

Loss share (the default): for each poster preset, the median wall time of the loss's forward +
backward on the step's logits against that of the whole step (network forward, loss, backward,
SGD step), timed round-robin on the CPU for two settings: the phantom recipe (batch 8 x 6
classes x 128^2, Unet-ResNet18 with the light decoder 128-64-32-16-16) and a Synapse-sized batch
(24 x 9 classes x 224^2, Unet-ResNet18). Target: under 5% of the step for every preset.

Throughput (``--throughput``): ``Trainer.fit`` against the bare model step. Both sides train the same architecture with the same loss on the same phantom batches, in this
process, one after the other:

- *bare*: the batches are loaded into memory first; then per batch ``forward -> loss ->
  backward -> optimizer.step -> scheduler.step`` (no data loading, no logging, no metrics);
- *Trainer.fit*: ``SegmentationModel`` through ``lightning.Trainer.fit`` with the phantom
  DataLoader (its workers), the loss, ``train/loss`` + per-term logging every
  ``log_every_n_steps``, the CSV and offline W&B loggers, progress bar off.

Throughput is slices per second over the timed training steps (after ``--warmup`` steps);
validation (metrics, W&B panels) runs after the timed window and is reported on its own line.
Target: Trainer / bare >= 0.9. Both sides run on the same device with the same precision and
memory format (``--accelerator``, ``--precision``, ``--channels-last``).

    .venv/bin/python scripts/bench_train.py [--repeats 5] [--settings phantom synapse]
    .venv/bin/python scripts/bench_train.py --throughput [--steps 30 --batch-size 16]
    .venv/bin/python scripts/bench_train.py --throughput --accelerator gpu \
        --precision bf16-mixed --channels-last --batch-size 24 --image-size 224
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import lightning as L
import torch

from datamodules import PhantomDataModule
from lightning_app.loggers import WandbLogger
from losses import PAPER_LOSSES, build_loss
from models import SegmentationModel

#: (batch, classes, image size, Unet decoder channels) of the loss-share settings
SHARE_SETTINGS = {
    "phantom": (8, 6, 128, (128, 64, 32, 16, 16)),
    "synapse": (24, 9, 224, (256, 128, 64, 32, 16)),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def loss_share(
    setting: str, repeats: int, clock=time.perf_counter
) -> list[tuple[str, float, float]]:
    """``[(preset, loss ms, step ms)]``: medians over ``repeats`` round-robin rounds of the
    loss's forward + backward and of the whole training step (one warm-up round first)."""
    import segmentation_models_pytorch as smp

    batch, classes, size, decoder = SHARE_SETTINGS[setting]
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=classes,
                   decoder_channels=decoder)  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    image = torch.randn(batch, 1, size, size)
    # a label map with large and small structures, as in segmentation data
    label = torch.zeros(batch, size, size, dtype=torch.long)
    for c in range(1, classes):
        side = max(2, size // (2 * c + 2))
        top, left = (c * 13) % (size - side), (c * 29) % (size - side)
        label[:, top : top + side, left : left + side] = c
    losses = {name: build_loss(name) for name in PAPER_LOSSES}
    with torch.no_grad():
        step_logits = net(image)  # the loss alone runs on logits of the step's network

    def step(loss) -> float:
        start = clock()
        opt.zero_grad(set_to_none=True)
        loss(net(image), label).backward()
        opt.step()
        return clock() - start

    def loss_only(loss) -> float:
        logits = step_logits.clone().requires_grad_(True)
        start = clock()
        loss(logits, label).backward()
        return clock() - start

    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in losses}
    for round_ in range(repeats + 1):
        for name, loss in losses.items():
            loss_s, step_s = loss_only(loss), step(loss)
            if round_ > 0:
                times[name][0].append(loss_s)
                times[name][1].append(step_s)
    return [
        (name, statistics.median(a) * 1e3, statistics.median(b) * 1e3)
        for name, (a, b) in times.items()
    ]


def print_loss_shares(settings: list[str], repeats: int, clock_name: str) -> None:
    print(
        f"loss share of a training step: CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, median {clock_name} time of {repeats} round-robin rounds; "
        f"target: every preset under 5% of the step"
    )
    for setting in settings:
        batch, classes, size, decoder = SHARE_SETTINGS[setting]
        print(
            f"\n{setting}: batch {batch} x {classes} classes x {size}^2, Unet-ResNet18 "
            f"(decoder {'-'.join(map(str, decoder))}), SGD"
        )
        print(
            f"| {'preset':<14} | {'loss fwd+bwd ms':>15} | {'step ms':>8} | {'share':>6} | target |"
        )
        print(f"|{'-' * 16}|{'-' * 17}|{'-' * 10}|{'-' * 8}|--------|")
        for name, loss_ms, step_ms in loss_share(setting, repeats, CLOCKS[clock_name]):
            share = loss_ms / step_ms
            verdict = "met" if share < 0.05 else "MISSED"
            print(
                f"| {name:<14} | {loss_ms:15.1f} | {step_ms:8.1f} | {share:6.1%} | {verdict:>6} |"
            )


class StepTimer(L.Callback):
    """Wall time from the start of training batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0 = self.t1 = 0.0
        self.slices = 0
        self.val_time = 0.0
        self._v0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()
        if batch_idx >= self.warmup:
            self.slices += batch["image"].shape[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.t1 = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_time = time.perf_counter() - self._v0


def make_model(dm: PhantomDataModule, loss: str) -> SegmentationModel:
    return SegmentationModel(
        loss=build_loss(loss),
        in_channels=dm.in_channels,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
    )


class ChannelsLast(L.Callback):
    """Put the model and every training/validation image in channels_last memory format."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)


def bare(dm: PhantomDataModule, loss: str, warmup: int, steps: int, args) -> float:
    """Slices/s of forward + loss + backward + SGD step + poly step on preloaded batches."""
    torch.manual_seed(0)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = make_model(dm, loss).to(device, memory_format=memory_format)
    net, criterion = model.net, model.loss
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=warmup + steps, power=0.9)
    batches = []
    for batch in dm.train_dataloader():
        image = batch["image"].to(device).contiguous(memory_format=memory_format)
        batches.append((image, batch["label"].to(device)))
        if len(batches) == warmup + steps:
            break
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    net.train()
    slices, t0 = 0, 0.0
    for i, (image, label) in enumerate(batches):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if hasattr(criterion, "set_step"):
            criterion.set_step(i)
        with autocast:
            logits = net(image)
        value = criterion(logits.float(), label)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if i >= warmup:
            slices += image.shape[0]
    _sync(device)
    return slices / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class CudaSync(L.Callback):
    """Synchronise the GPU at the timer's edges so the timed window holds the work."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def trainer_fit(
    dm: PhantomDataModule, loss: str, warmup: int, steps: int, workdir: str, args
) -> tuple[float, float]:
    """(train slices/s through Trainer.fit, seconds of the validation pass)."""
    torch.manual_seed(0)
    model = make_model(dm, loss)
    timer = StepTimer(warmup)
    loggers = [L.pytorch.loggers.CSVLogger(workdir, name="csv")]
    if os.environ.get("WANDB_MODE", "offline") != "disabled":
        loggers.insert(0, WandbLogger(save_dir=workdir, offline=True, project="bench"))
    callbacks = [CudaSync(), timer] + ([ChannelsLast()] if args.channels_last else [])
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=4,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
    )
    trainer.fit(model, dm)
    return timer.slices / (timer.t1 - timer.t0), timer.val_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="loss share: round-robin rounds (default 5)"
    )
    parser.add_argument(
        "--settings", nargs="+", choices=sorted(SHARE_SETTINGS), default=["phantom", "synapse"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="loss share: wall (default) or cpu (process CPU time, steadier on a busy machine "
        "with --threads 1)",
    )
    parser.add_argument(
        "--throughput", action="store_true", help="Trainer.fit against the bare step instead"
    )
    parser.add_argument("--loss", default="ce_topk_dice", help="throughput: the loss preset")
    parser.add_argument("--steps", type=int, default=25, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="phantom HDF5 folder (default: temp)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.throughput:
        print_loss_shares(args.settings, args.repeats, args.clock)
        return
    os.environ.setdefault("WANDB_SILENT", "true")

    with tempfile.TemporaryDirectory() as tmp:
        dm = PhantomDataModule(
            data_dir=args.data_dir or os.path.join(tmp, "phantom"),
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=False,
        )
        dm.prepare_data()
        dm.setup("fit")
        n_batches = len(dm.train_dataloader())
        if args.warmup + args.steps > n_batches:
            raise ValueError(
                f"Expected --warmup + --steps <= {n_batches} (train batches of the phantom), "
                f"but got {args.warmup + args.steps}"
            )
        # bare before and after the fit; the faster is the reference (the machine may be shared)
        ref_before = bare(dm, args.loss, args.warmup, args.steps, args)
        fit, val_s = trainer_fit(dm, args.loss, args.warmup, args.steps, tmp, args)
        ref = max(ref_before, bare(dm, args.loss, args.warmup, args.steps, args))

    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    print(
        f"device: {device}, precision: {args.precision}, channels_last: {args.channels_last}, "
        f"torch threads: {torch.get_num_threads()}, loss: {args.loss}, "
        f"batch {args.batch_size} x {args.image_size}^2, {args.steps} timed steps, "
        f"{args.num_workers} workers"
    )
    print(f"{'':28s}{'slices/s':>10s}")
    print(f"{'bare fwd+bwd+step':28s}{ref:10.2f}")
    print(f"{'Trainer.fit (full loop)':28s}{fit:10.2f}")
    print(f"{'ratio (target >= 0.9)':28s}{fit / ref:10.3f}")
    print(f"{'validation pass (4 batches)':28s}{val_s:9.2f}s")


if __name__ == "__main__":
    main()
