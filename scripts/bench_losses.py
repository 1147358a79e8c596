"""Benchmark every loss preset against plain CE and MONAI's DiceLoss / DiceCELoss on the CPU.

Prints, for logits of shape (8, 9, 224, 224), each loss's median forward+backward time over
repeated round-robin rounds, its ratios to plain ``ce`` and to the two MONAI references measured
in the same run (each ratio is the median over the rounds of the ratio within a round: a
paired comparison, so that drift between rounds cancels), and its peak memory during one
forward+backward: the largest total size of
the tensors alive at any moment, from torch's profiler memory timeline
(``profile(profile_memory=True)``, ``export_memory_timeline(device="cpu")``), minus what was
alive when the call started (so the logits themselves are not counted).
Each preset is held against its MONAI counterpart in the same run: ``DiceCELoss`` for the
compound presets, ``DiceLoss`` for the others (target: at most 1.0x). Run with
``make bench-losses`` (options: ``--shape``, ``--repeats``, ``--threads``, ``--clock cpu`` for
process CPU time instead of wall time, ``--no-memory``, ``--bf16``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch.profiler import ProfilerActivity, profile

from losses import PRESETS, CompoundLoss, TopKDiceLoss, build_loss

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def time_once(fn: Callable, logits: torch.Tensor, target: torch.Tensor) -> float:
    """Seconds of one ``fn(logits, target).backward()`` (wall clock, or process CPU time)."""
    x = logits.detach().requires_grad_(True)
    start = clock()
    fn(x, target).backward()
    return clock() - start


def round_robin_times(
    fns: dict[str, Callable], logits: torch.Tensor, target: torch.Tensor, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each loss in each of ``repeats`` rounds; a round times every loss once, so
    machine noise hits all alike."""
    for fn in fns.values():  # warm-up
        time_once(fn, logits, target)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn, logits, target))
    return samples


def paired_ratio(samples: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over the rounds of ``time(name) / time(reference)`` within each round."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[reference], strict=True))


def peak_memory(fn: Callable, logits: torch.Tensor, target: torch.Tensor) -> float:
    """Peak bytes of tensors allocated during one forward+backward (torch profiler timeline)."""
    x = logits.detach().requires_grad_(True)
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn(x, target).backward()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.raw.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    totals = [sum(row) for row in sizes]
    return float(max(totals) - totals[0]) if totals else float("nan")


def _under_autocast(fn: Callable) -> Callable:
    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(x, t)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=4, default=(8, 9, 224, 224), metavar=("B", "C", "H", "W")
    )
    parser.add_argument(
        "--repeats", type=int, default=41, help="round-robin repeats (default 41: fewer are noisy)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default) or cpu: process CPU time, steadier on a shared machine with "
        "--threads 1",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 logits, every call under torch.autocast(bf16): the losses still compute in "
        "float32 (the memory column then shows what that costs)",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, classes, height, width = args.shape
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, height, width, generator=gen)
    target = torch.randint(0, classes, (batch, height, width), generator=gen)
    target_monai = target.unsqueeze(1)
    if args.bf16:
        logits = logits.to(torch.bfloat16)

    monai_dice = DiceLoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    )
    monai_dice_ce = DiceCELoss(
        softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    )
    candidates: dict[str, Callable] = {"TopKDiceLoss(k=10)": TopKDiceLoss(k=10)}
    candidates.update({name: build_loss(name) for name in PRESETS})
    counterpart = {
        name: "MONAI DiceCELoss" if isinstance(loss, CompoundLoss) else "MONAI DiceLoss"
        for name, loss in candidates.items()
    }

    fns: dict[str, Callable] = {
        "MONAI DiceLoss": lambda x, t: monai_dice(x, target_monai),
        "MONAI DiceCELoss": lambda x, t: monai_dice_ce(x, target_monai),
        **candidates,
    }
    if args.bf16:
        fns = {name: _under_autocast(fn) for name, fn in fns.items()}
    samples = round_robin_times(fns, logits, target, args.repeats)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    memory = (
        {name: float("nan") for name in fns}
        if args.no_memory
        else {name: peak_memory(fn, logits, target) for name, fn in fns.items()}
    )
    print(
        f"logits {tuple(logits.shape)} {str(logits.dtype).removeprefix('torch.')}"
        f"{' under bf16 autocast' if args.bf16 else ''}, CPU, {torch.get_num_threads()} threads, "
        f"median {args.clock} time of {args.repeats} forward+backward runs (round-robin; "
        f"ratios: median of the ratios within each round), "
        f"torch {torch.__version__}; peak MB: torch profiler memory timeline of one "
        f"forward+backward (tensors allocated during the call); x MONAI: against DiceCELoss for "
        f"compound presets, DiceLoss for the others (target <= 1.00)\n"
    )
    print(
        f"| {'loss':<32} | {'ms':>7} | {'x ce':>5} | {'x MONAI Dice':>12} | "
        f"{'x MONAI DiceCE':>14} | {'peak MB':>7} | {'x MONAI':>7} | {'target':>6} |"
    )
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 7}|{'-' * 14}|{'-' * 16}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    missed = []
    for name, seconds in medians.items():
        x_ce, x_dice, x_dice_ce = (
            paired_ratio(samples, name, ref) for ref in ("ce", "MONAI DiceLoss", "MONAI DiceCELoss")
        )
        versus, verdict = "", ""
        if name in counterpart:
            versus = x_dice_ce if counterpart[name] == "MONAI DiceCELoss" else x_dice
            verdict = "met" if versus <= 1.0 else "MISSED"
            if versus > 1.0:
                missed.append(name)
            versus = f"{versus:.2f}"
        print(
            f"| {name:<32} | {seconds * 1e3:7.1f} | {x_ce:5.2f} | {x_dice:12.2f} | "
            f"{x_dice_ce:14.2f} | {memory[name] / 2**20:7.1f} | {versus:>7} | {verdict:>6} |"
        )
    print(
        f"\nat or below the MONAI counterpart: {len(counterpart) - len(missed)}/{len(counterpart)}"
    )


if __name__ == "__main__":
    main()
