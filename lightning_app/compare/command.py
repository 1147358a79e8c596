"""The command line of ``python -m lightning_app.compare``: ``losses`` (``make compare``),
``sweep-k`` (``make sweep-k``), ``analyze`` (the report from a per-case CSV alone) and ``power``
(planning from a pilot's per-case CSV)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_app.compare.analysis import analyze_rows, default_reference, read_rows
from lightning_app.compare.launchers import Launcher, LocalPool, run_comparison
from lightning_app.compare.plan import (
    DEFAULT_K,
    Comparison,
    default_seeds,
    loss_entries,
    sweep_k_entries,
)
from lightning_app.compare.power import power_report
from lightning_app.compare.slurm import SlurmLauncher
from losses import PAPER_LOSSES


def _split_words(values: Sequence[str]) -> list[str]:
    return [w for v in values for w in v.replace(",", " ").split()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_app.compare",
        description="Train and test every loss (or K) with every seed, then write the table "
        "(results/<dataset>/comparison.md|csv) and plots. Arguments after `--` are Lightning CLI "
        "overrides applied to every run.",
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for name, help_text in (
        ("losses", "compare loss presets (the poster's table)"),
        ("sweep-k", "CE + topK-Dice over K values"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--dataset", default="phantom", help="configs/data/<dataset>.yaml")
        p.add_argument(
            "--seeds",
            type=int,
            default=None,
            help="runs per row (default: 3)",
        )
        p.add_argument("--first-seed", type=int, default=42, help="seeds are first..first+n-1")
        p.add_argument(
            "--folds",
            nargs="+",
            default=None,
            help="cross-validation folds (nnU-Net datasets), e.g. 0 1 2 3 4: every (row, seed, "
            "fold) is run, each training case tested once by the fold that held it out",
        )
        p.add_argument("--out", type=Path, default=None, help="default results/<dataset>")
        p.add_argument(
            "--test-ckpt",
            choices=("last", "best"),
            default="last",
            help="checkpoint tested: last (TransUNet: final model) or best val Dice",
        )
        p.add_argument(
            "--report-only", action="store_true", help="launch nothing; tabulate the finished runs"
        )
        p.add_argument("--dry-run", action="store_true", help="print the plan and commands")
        p.add_argument(
            "--launcher",
            choices=("inprocess", "local", "slurm"),
            default="inprocess",
            help="inprocess: one run after another; local: --jobs runs at once on the local host; "
            "slurm: one SLURM job per run (defaults in configs/launcher/<launcher>.yaml)",
        )
        p.add_argument(
            "--jobs", type=int, default=None, help="local: runs at once (default: one per GPU)"
        )
        p.add_argument(
            "--runs-per-gpu", type=int, default=None, help="local: runs packed on each GPU"
        )
        p.add_argument(
            "--sbatch",
            default="",
            help='slurm: sbatch options, e.g. "--partition=gpu --gres=gpu:1"',
        )
        p.add_argument(
            "--no-wait",
            action="store_true",
            help="slurm: print the job ids and return; run the same command again to tabulate",
        )
        p.add_argument("--poll", type=float, default=None, help="slurm: seconds between squeues")
        if name == "losses":
            p.add_argument(
                "--losses",
                nargs="+",
                default=list(PAPER_LOSSES),
                help="loss presets, in table order (space or comma separated)",
            )
            p.add_argument(
                "--reference",
                default=None,
                help="preset (or row name) the others are tested against (default: ce_topk_dice "
                "when in --losses, else the first loss)",
            )
        else:
            p.add_argument(
                "--k",
                nargs="+",
                default=[f"{k:g}" for k in DEFAULT_K],
                help="K values in percent (space or comma separated)",
            )
            p.add_argument(
                "--reference",
                default="100",
                help="K of the reference row of the tests (default 100)",
            )
    p = sub.add_parser("analyze", help="the report (md, csv, plots) from a per-case CSV alone")
    p.add_argument("--per-case", type=Path, required=True, help="<name>_per_case.csv")
    p.add_argument("--reference", default=None, help='row name, e.g. "CE + Dice"')
    p.add_argument("--out", type=Path, default=None, help="default: the CSV's folder")
    p.add_argument("--dataset", default=None, help="poster layout (default: from the classes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p = sub.add_parser("power", help="minimal detectable difference and the design needed")
    p.add_argument("--per-case", type=Path, required=True, help="a pilot's <name>_per_case.csv")
    p.add_argument("--reference", default=None, help='row name, e.g. "CE + Dice"')
    p.add_argument("--effect", type=float, default=1.0, help="difference to detect (Dice points)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Entry point: ``python -m lightning_app.compare {losses,sweep-k} [options] [-- ARGS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    raw = list(argv)
    user_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, user_args = argv[:cut], argv[cut + 1 :]
    opts = build_parser().parse_args(argv)
    if opts.mode == "analyze":
        return analyze_command(opts)
    if opts.mode == "power":
        print(power_report(read_rows(opts.per_case), opts.reference, opts.effect))
        return {}
    if opts.seeds is not None and opts.seeds < 1:
        raise ValueError(f"Expected argument `seeds` to be >= 1, but got {opts.seeds}")
    n_seeds = opts.seeds if opts.seeds is not None else default_seeds(opts.dataset)
    seeds = list(range(opts.first_seed, opts.first_seed + n_seeds))
    if opts.mode == "losses":
        losses = _split_words(opts.losses)
        entries = loss_entries(losses)
        if opts.reference is None:
            reference = default_reference([e.label for e in entries])
        else:
            reference = PAPER_LOSSES.get(opts.reference, opts.reference)
        name, mode = "comparison", "compare"
    else:
        try:
            ks = [float(k) for k in _split_words(opts.k)]
        except ValueError as err:
            raise ValueError(f"Expected argument `k` to hold numbers, but got {opts.k}") from err
        entries = sweep_k_entries(ks)
        try:
            reference = f"K={float(opts.reference):g}"
        except ValueError as err:
            raise ValueError(
                f"Expected argument `reference` to be a K value, but got {opts.reference!r}"
            ) from err
        name, mode = "sweep_k", "sweepk"
    if reference not in [e.label for e in entries]:
        print(f"note: the reference row {reference!r} is not part of this run; the first row is")
        reference = default_reference([e.label for e in entries])
    folds = None
    if opts.folds is not None:
        words = _split_words(opts.folds)
        if not all(w.isdigit() for w in words):
            raise ValueError(f"Expected argument `folds` to hold fold numbers, but got {words}")
        folds = [int(w) for w in words]
    comparison = Comparison(
        dataset=opts.dataset,
        entries=entries,
        seeds=seeds,
        user_args=user_args,
        out_dir=opts.out,
        name=name,
        mode=mode,
        reference=reference,
        test_ckpt=opts.test_ckpt,
        command=shlex.join(["python", "-m", "lightning_app.compare", *raw]),
        folds=folds,
    )
    launcher = build_launcher(opts, comparison.configs_dir)
    return run_comparison(
        comparison, report_only=opts.report_only, dry_run=opts.dry_run, launcher=launcher
    )


def analyze_command(opts: argparse.Namespace) -> dict[str, Path]:
    """``analyze``: the report of ``--per-case`` into ``--out`` (default: the CSV's folder),
    named after the CSV (``comparison_per_case.csv`` -> ``comparison.md``)."""
    rows = read_rows(opts.per_case)
    stem = opts.per_case.stem.removesuffix("_per_case") or "comparison"
    out = opts.out if opts.out is not None else opts.per_case.parent
    result = analyze_rows(
        rows,
        out,
        stem=stem,
        reference=opts.reference,
        dataset=opts.dataset,
        notes=[f"- Per-case scores: `{opts.per_case}`"],
        seed=opts.seed,
    )
    for kind, path in result.paths.items():
        print(f"{kind:>15}: {path}")
    return result.paths


def _launcher_defaults(configs_dir: Path, name: str) -> dict:
    path = configs_dir / "launcher" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def build_launcher(opts: argparse.Namespace, configs_dir: Path) -> Launcher | None:
    """The launcher the options ask for, with ``configs/launcher/<name>.yaml``'s defaults.

    Raises:
        ValueError: ``--jobs``/``--runs-per-gpu`` below 1, or an unparsable ``--sbatch``.
    """
    defaults = _launcher_defaults(configs_dir, opts.launcher)
    if opts.launcher == "local":
        jobs = opts.jobs if opts.jobs is not None else defaults.get("jobs")
        per_gpu = opts.runs_per_gpu or defaults.get("runs_per_gpu") or 1
        return LocalPool(jobs=jobs, runs_per_gpu=int(per_gpu))
    if opts.launcher == "slurm":
        try:
            user = shlex.split(opts.sbatch)
        except ValueError as err:
            raise ValueError(f"Expected `sbatch` options in shell syntax: {err}") from err
        poll = opts.poll if opts.poll is not None else defaults.get("poll_seconds", 30)
        return SlurmLauncher(
            sbatch_args=[str(a) for a in defaults.get("sbatch") or []] + user,
            wait=not opts.no_wait,
            poll_seconds=float(poll),
        )
    return None
