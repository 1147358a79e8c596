"""Wall time of a small comparison grid (4 runs: 2 losses x 2 seeds) with the local launcher at
JOBS=1 and JOBS=2, in the same run, and their ratio (``make bench-grid``; part of ``make bench``).

Every grid trains and tests tiny phantom runs (``python -m lightning_app.compare losses
--launcher local --jobs N``) in a fresh output folder; the data are prepared once beforehand, so
the times cover training and testing only. On a CPU machine the local pool divides the cores
between the runs (JOBS=2 on 2 cores: one thread each), so the gain is bounded by what one run
leaves idle (start-up, data loading, validation, testing). On GPUs, ``--jobs`` counts runs at
once and ``--runs-per-gpu`` packs them, e.g. ``--jobs 4 --runs-per-gpu 1 4 --image-size 224``
compares one run per GPU with four on one GPU (give ``--gpu``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_args(data_dir: Path, image_size: int, epochs: int, accelerator: str) -> list[str]:
    return [
        "--data.num_train=4",
        "--data.num_val=1",
        "--data.num_test=2",
        f"--data.volume_shape=[8,{max(64, image_size)},{max(64, image_size)}]",
        f"--data.image_size={image_size}",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.progress=false",
        f"--data.data_dir={data_dir}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.accelerator={accelerator}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="JOBS values timed")
    parser.add_argument("--runs-per-gpu", type=int, nargs="+", default=[1])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="train on the GPUs (accelerator gpu)")
    opts = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    accelerator = "gpu" if opts.gpu else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        root = Path(tmp)
        args = tiny_args(root / "data", opts.image_size, opts.epochs, accelerator)
        base = [sys.executable, "-m", "lightning_app.compare", "losses", "--dataset", "phantom",
                "--losses", "ce_dice", "ce_topk_dice", "--seeds", "2", "--launcher", "local"]  # fmt: skip
        prep = subprocess.run(
            [sys.executable, "-m", "lightning_app.compare.job", "prepare", "--",
             f"--config={REPO / 'configs' / 'base.yaml'}",
             f"--config={REPO / 'configs' / 'data' / 'phantom.yaml'}",
             f"--config={REPO / 'configs' / 'loss' / 'ce_dice.yaml'}", *args],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if prep.returncode != 0:
            print(prep.stdout + prep.stderr)
            return 1
        cores = len(os.sched_getaffinity(0))
        print(
            f"grid: 2 losses x 2 seeds = 4 runs (fit {opts.epochs} epoch(s) + test), phantom "
            f"4 train volumes 8x{max(64, opts.image_size)}^2 at {opts.image_size}^2, "
            f"{accelerator}, {cores} cores; local launcher"
        )
        times: dict[tuple[int, int], float] = {}
        for per_gpu in opts.runs_per_gpu if opts.gpu else [1]:
            for jobs in opts.jobs:
                out = root / f"out-j{jobs}-k{per_gpu}"
                cmd = [*base, "--jobs", str(jobs), "--out", str(out)]
                if opts.gpu:
                    cmd += ["--runs-per-gpu", str(per_gpu)]
                start = time.monotonic()
                run = subprocess.run(
                    [*cmd, "--", *args], cwd=REPO, env=env, capture_output=True, text=True
                )
                times[jobs, per_gpu] = time.monotonic() - start
                if run.returncode != 0:
                    print(run.stdout[-3000:] + run.stderr[-3000:])
                    return 1
                label = f"JOBS={jobs}" + (f" RUNS_PER_GPU={per_gpu}" if opts.gpu else "")
                print(f"  {label:<28} {times[jobs, per_gpu]:8.1f} s")
        first = min(times)
        for (jobs, per_gpu), seconds in times.items():
            if (jobs, per_gpu) != first:
                label = f"JOBS={jobs}" + (f" RUNS_PER_GPU={per_gpu}" if opts.gpu else "")
                ref = f"JOBS={first[0]}" + (f" RUNS_PER_GPU={first[1]}" if opts.gpu else "")
                print(f"  speed-up {label} vs {ref}: {times[first] / seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
