"""Benchmark every loss preset against MONAI's DiceLoss and DiceCELoss on the CPU.

Prints the median forward+backward time over repeated runs for logits of shape
(8, 9, 224, 224) and each loss's ratio to the two MONAI references measured in the same run.
Run with ``make bench-losses`` (options: ``--shape``, ``--repeats``, ``--threads``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss, DiceLoss

from losses import PRESETS, TopKDiceLoss, build_loss


def time_once(fn: Callable, logits: torch.Tensor, target: torch.Tensor) -> float:
    """Seconds of one ``fn(logits, target).backward()``."""
    x = logits.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x, target).backward()
    return time.perf_counter() - start


def median_times(
    fns: dict[str, Callable], logits: torch.Tensor, target: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median seconds of each loss, timed round-robin so machine noise hits all alike."""
    for fn in fns.values():  # warm-up
        time_once(fn, logits, target)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn, logits, target))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=4, default=(8, 9, 224, 224), metavar=("B", "C", "H", "W")
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, classes, height, width = args.shape
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, height, width, generator=gen)
    target = torch.randint(0, classes, (batch, height, width), generator=gen)
    target_monai = target.unsqueeze(1)

    monai_dice = DiceLoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    )
    monai_dice_ce = DiceCELoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    )
    candidates: dict[str, Callable] = {"TopKDiceLoss(k=10)": TopKDiceLoss(k=10)}
    candidates.update({name: build_loss(name) for name in PRESETS})

    fns: dict[str, Callable] = {
        "MONAI DiceLoss": lambda x, t: monai_dice(x, target_monai),
        "MONAI DiceCELoss": lambda x, t: monai_dice_ce(x, target_monai),
        **candidates,
    }
    medians = median_times(fns, logits, target, args.repeats)
    ref_dice, ref_dice_ce = medians["MONAI DiceLoss"], medians["MONAI DiceCELoss"]
    print(
        f"logits {tuple(logits.shape)}, CPU, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} forward+backward runs (round-robin), "
        f"torch {torch.__version__}\n"
    )
    print(f"| {'loss':<22} | {'ms':>8} | {'x MONAI DiceLoss':>16} | {'x MONAI DiceCELoss':>18} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 18}|{'-' * 20}|")
    rows = list(medians.items())
    for name, seconds in rows:
        print(
            f"| {name:<22} | {seconds * 1e3:8.1f} | {seconds / ref_dice:16.2f} | "
            f"{seconds / ref_dice_ce:18.2f} |"
        )


if __name__ == "__main__":
    main()
