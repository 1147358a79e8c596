"""``python -m lightning_app.compare``: train and test every loss x seed, then tabulate them.

Two modes (``make compare`` and ``make sweep-k``)::

    python -m lightning_app.compare losses  --dataset phantom [--seeds 1]
        [--losses ce ce_dice focal_dice topk_ce_dice ce_topk_dice] [-- <Lightning CLI overrides>]
    python -m lightning_app.compare sweep-k --dataset phantom --k 5 10 20 50 100 [-- <overrides>]

Every run is the template's own CLI in a subprocess, with identical settings apart from the
loss (or K) and the seed::

    python -m lightning_app fit  --config configs/base.yaml --config configs/data/<dataset>.yaml
        --config configs/loss/<loss>.yaml [--config configs/compare/<dataset>.yaml]
        [--config <out>/runs/<group>.logger.yaml] --seed_everything=<seed>
        --trainer.default_root_dir=<out>/runs/<run name> [K override] <overrides>
    python -m lightning_app test <the same arguments> --ckpt_path=<run>/checkpoints/last.ckpt

``configs/compare/<dataset>.yaml`` (when present) holds the comparison's own defaults for the
dataset (epochs). ``<overrides>`` (``make ... ARGS=...``) come last and win.

Run names are deterministic, ``compare-<loss>-seed<seed>-<hash>`` and
``sweepk-k<K>-seed<seed>-<hash>``; the 8-hex hash covers everything that defines the run
besides the loss/K and seed: the dataset, the parsed contents of the yaml files above (comments
and formatting do not count), the overrides and the test checkpoint. Changing ``ARGS`` therefore
starts a new set of runs instead of mixing settings, while comparisons that differ only in
their seeds or losses share their common runs (``SEEDS=1`` then ``SEEDS=3`` adds two seeds). The runs live in ``<out>/runs/<run name>/``
(a normal run directory: config.yaml, checkpoints/, csv/, wandb/, per_case.csv, summary.md) with
the subprocess output in ``<run name>/compare.log``.

Resume: a run whose ``per_case.csv`` exists is finished and skipped; a run whose fit completed
(marker ``compare-fit.done``) is only tested; a run with ``checkpoints/last.ckpt`` but no marker
continues with ``fit --ckpt_path=<last.ckpt>``; a run directory that holds a config but no
checkpoint (a fit that died in its first epoch) is renamed ``<name>.stale-<time>`` and started
again. So an interrupted ``make compare`` is resumed by running the same command again.

All runs of one comparison share the W&B group ``compare-<dataset>-<hash>`` (``sweepk-...`` for
a sweep; project ``topk-dice-<dataset>``, set by the CLI): the group is written into the W&B
logger entry of a small logger overlay yaml (``<out>/runs/<group>.logger.yaml``), since a
single field of a list entry cannot be overridden on the command line. The table and the plots
are then logged by a W&B run of their own (same project and group, job type ``comparison``;
offline without credentials, nothing with ``WANDB_MODE=disabled``).

Outputs in ``<out>`` (default ``results/<dataset>``), ``<name>`` = ``comparison`` or ``sweep_k``:

- ``<name>.md``: the table in the poster's layout (rows in the poster's order, named as in the
  poster; mean ± std over seeds in percent, best per column in bold, Wilcoxon p-value against
  the reference row, see :mod:`lightning_app.statistics`) and the plots;
- ``<name>.csv``: the same table, machine-readable (percent, columns ``<title>`` and
  ``<title> std``, ``wilcoxon p``, ``wilcoxon pairs``, ``best``);
- ``<name>_per_case.csv``: every run's per-case rows (row label, preset, seed, run, case, class,
  dice, iou, precision, recall, hd95; fractions), from which the p-values can be recomputed;
- ``<name>_per_class_dice.png``, ``<name>_val_dice.png`` and, for the sweep,
  ``sweep_k_mdice_vs_k.png``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_app.cli import RUN_NAME_ENV
from lightning_app.loggers import resolve_wandb_mode
from lightning_app.plots import plot_against, plot_columns, plot_curves, read_val_curve
from lightning_app.statistics import (
    PER_CASE_METRICS,
    RunScores,
    TableRow,
    as_mapping,
    comparison_rows,
    dataset_columns,
    read_per_case_csv,
)
from losses import PAPER_LOSSES

__all__ = [
    "DEFAULT_K",
    "FIT_DONE",
    "PER_CASE_FILE",
    "Comparison",
    "Entry",
    "RunSpec",
    "default_seeds",
    "find_per_case_csv",
    "loss_entries",
    "main",
    "run_comparison",
    "run_state",
    "sweep_k_entries",
    "write_outputs",
]

#: Per-case test metrics of a run (written by ``python -m lightning_app test``).
PER_CASE_FILE = "per_case.csv"
#: Marker the comparison writes into a run directory once its fit has returned successfully.
FIT_DONE = "compare-fit.done"
#: The reference row of the paired tests in ``losses`` mode.
REFERENCE_LOSS = "ce_dice"
#: Default K values of ``sweep-k`` (percent of pixels).
DEFAULT_K: tuple[float, ...] = (5.0, 10.0, 20.0, 50.0, 100.0)
#: The Lightning CLI key that sets K of the topK Dice term of ``ce_topk_dice``.
K_KEY = "model.loss.init_args.terms.topk_dice.init_args.k"
#: Seeds per loss when ``--seeds`` is not given: one on the CPU phantom (time), three elsewhere.
_DEFAULT_SEEDS = {"phantom": 1}
_FALLBACK_SEEDS = 3
#: Overrides that the comparison sets itself and that ARGS must not touch.
_RESERVED = ("--seed_everything", "--trainer.default_root_dir", "--ckpt_path")

Runner = Callable[[list[str], Path, dict[str, str]], int]


def default_seeds(dataset: str) -> int:
    """Seeds per row when none are requested: 1 for the phantom, 3 for the real datasets."""
    return _DEFAULT_SEEDS.get(dataset, _FALLBACK_SEEDS)


@dataclass(frozen=True)
class Entry:
    """One table row: ``label`` (as printed), ``key`` (in run names), the loss preset, and
    extra CLI arguments (the K override of a sweep)."""

    label: str
    key: str
    loss: str
    extra_args: tuple[str, ...] = ()


def loss_entries(losses: Sequence[str]) -> list[Entry]:
    """Rows for loss presets, named as in the poster when they are its losses
    (``ce_topk_dice -> "CE + topK-Dice"``), else by preset name.

    Raises:
        ValueError: an empty or repeated list.
    """
    losses = list(losses)
    if not losses:
        raise ValueError("Expected argument `losses` to name at least one loss preset, got none")
    if len(set(losses)) != len(losses):
        raise ValueError(f"Expected argument `losses` without repeats, but got {losses}")
    return [Entry(PAPER_LOSSES.get(name, name), name, name) for name in losses]


def sweep_k_entries(ks: Sequence[float], loss: str = "ce_topk_dice") -> list[Entry]:
    """Rows ``K=<k>`` of a sweep of CE + topK-Dice over K.

    Raises:
        ValueError: an empty or repeated list, or a K outside (0, 100].
    """
    ks = [float(k) for k in ks]
    if not ks:
        raise ValueError("Expected argument `k` to hold at least one value, but got none")
    for k in ks:
        if not 0 < k <= 100:
            raise ValueError(f"Expected argument `k` to be in (0, 100], but got {k:g}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"Expected argument `k` without repeats, but got {ks}")
    return [Entry(f"K={k:g}", f"k{k:g}", loss, (f"--{K_KEY}={k:g}",)) for k in ks]


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) run: its name, directory and the common CLI arguments of fit and test."""

    entry: Entry
    seed: int
    name: str
    run_dir: Path
    args: tuple[str, ...]


@dataclass
class Comparison:
    """A comparison to run and tabulate.

    Attributes:
        dataset: ``configs/data/<dataset>.yaml`` must exist.
        entries: the rows (:func:`loss_entries` or :func:`sweep_k_entries`).
        seeds: the seeds, one run per row and seed (``seed_everything``).
        user_args: Lightning CLI overrides applied to every run (``ARGS``), last.
        out_dir: outputs; runs in ``out_dir/runs``.
        name: file stem of the outputs (``comparison`` or ``sweep_k``).
        mode: ``compare`` or ``sweepk`` (prefix of run names and of the W&B group).
        reference: label of the row the others are tested against (``None``: none).
        test_ckpt: ``last`` (TransUNet's protocol: the final model) or ``best`` (best
            ``val/dice/mean``).
        configs_dir: the repository's ``configs`` folder.
        python: interpreter that runs ``-m lightning_app``.
        command: the command line that started the comparison (shown in the report).
    """

    dataset: str
    entries: list[Entry]
    seeds: list[int]
    user_args: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    name: str = "comparison"
    mode: str = "compare"
    reference: str | None = None
    test_ckpt: str = "last"
    configs_dir: Path = Path("configs")
    python: str = sys.executable
    command: str = ""

    def __post_init__(self) -> None:
        self._hashes: dict[str, str] = {}
        self.out_dir = Path(self.out_dir or Path("results") / self.dataset)
        self.configs_dir = Path(self.configs_dir)
        data_cfg = self.configs_dir / "data" / f"{self.dataset}.yaml"
        if not data_cfg.is_file():
            known = sorted(p.stem for p in (self.configs_dir / "data").glob("*.yaml"))
            raise FileNotFoundError(
                f"No dataset config {data_cfg}: expected `dataset` to be one of {known}"
            )
        for entry in self.entries:
            loss_cfg = self.loss_config(entry)
            if not loss_cfg.is_file():
                known = sorted(p.stem for p in (self.configs_dir / "loss").glob("*.yaml"))
                raise FileNotFoundError(
                    f"No loss config {loss_cfg}: expected a loss preset among {known}"
                )
        if not self.seeds:
            raise ValueError("Expected at least one seed, but got none")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Expected distinct seeds, but got {self.seeds}")
        if self.test_ckpt not in ("last", "best"):
            raise ValueError(
                f"Expected `test_ckpt` to be 'last' or 'best', but got {self.test_ckpt!r}"
            )
        for arg in self.user_args:
            key = arg.split("=", 1)[0]
            if key in _RESERVED or (self.mode == "sweepk" and key == f"--{K_KEY}"):
                raise ValueError(
                    f"The comparison sets {key} itself; remove it from the overrides (ARGS): "
                    f"{' '.join(self.user_args)}"
                )
        labels = [e.label for e in self.entries]
        if self.reference is not None and self.reference not in labels:
            self.reference = None

    # ------------------------------------------------------------------ configuration
    @property
    def runs_dir(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "runs"

    def loss_config(self, entry: Entry) -> Path:
        return self.configs_dir / "loss" / f"{entry.loss}.yaml"

    def common_configs(self) -> list[Path]:
        """base + data (+ the comparison's dataset defaults), shared by every run."""
        files = [self.configs_dir / "base.yaml", self.configs_dir / "data" / f"{self.dataset}.yaml"]
        extra = self.configs_dir / "compare" / f"{self.dataset}.yaml"
        return files + ([extra] if extra.is_file() else [])

    def _settings(self, entry: Entry | None) -> dict:
        def parsed(path: Path) -> object:
            return yaml.safe_load(path.read_text())

        settings = {
            "dataset": self.dataset,
            "configs": [parsed(p) for p in self.common_configs()],
            "args": list(self.user_args),
            "test_ckpt": self.test_ckpt,
        }
        if entry is not None:
            settings["loss"] = parsed(self.loss_config(entry))
            settings["extra"] = list(entry.extra_args)
        return settings

    def settings_hash(self, entry: Entry | None = None) -> str:
        """8 hex digits of the SHA-1 of the settings (see the module docstring), computed once
        per comparison, so that a yaml edited while it runs cannot split it in two."""
        key = entry.key if entry is not None else ""
        if key not in self._hashes:
            blob = json.dumps(self._settings(entry), sort_keys=True, default=str)
            self._hashes[key] = hashlib.sha1(blob.encode()).hexdigest()[:8]
        return self._hashes[key]

    @property
    def group(self) -> str:
        """W&B group shared by every run of this comparison."""
        return f"{self.mode}-{self.dataset}-{self.settings_hash()}"

    def logger_overlay(self) -> Path | None:
        """Write ``runs/<group>.logger.yaml``: the ``trainer.logger`` list of the yaml files
        with ``group`` set on W&B loggers that leave it unset. ``None`` (nothing written) when
        the configs have no W&B logger, or when the overrides set ``trainer.logger`` (theirs
        wins)."""
        if any(a.startswith("--trainer.logger") for a in self.user_args):
            return None
        loggers = None
        for path in self.common_configs():
            trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
            if "logger" in trainer:
                loggers = trainer["logger"]
        items = loggers if isinstance(loggers, list) else [loggers]
        changed = False
        for item in items:
            if isinstance(item, dict) and str(item.get("class_path", "")).endswith("WandbLogger"):
                init_args = item.get("init_args") or {}
                if init_args.get("group") is None:
                    init_args["group"] = self.group
                    item["init_args"] = init_args
                    changed = True
        if not changed:
            return None
        path = self.runs_dir / f"{self.group}.logger.yaml"
        text = "# Written by lightning_app.compare: the runs' loggers with a shared W&B group.\n"
        text += yaml.safe_dump({"trainer": {"logger": loggers}}, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            # atomic: comparisons running in parallel (one loss per GPU) share this file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        return path

    def plan(self, overlay: Path | None) -> list[RunSpec]:
        """Every (row, seed) run, rows first, in table order."""
        specs = []
        for entry in self.entries:
            digest = self.settings_hash(entry)
            for seed in self.seeds:
                name = f"{self.mode}-{entry.key}-seed{seed}-{digest}"
                run_dir = self.runs_dir / name
                args = [f"--config={p}" for p in self.common_configs()]
                args.insert(2, f"--config={self.loss_config(entry)}")
                if overlay is not None:
                    args.append(f"--config={overlay}")
                args += [f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}"]
                args += [*entry.extra_args, *self.user_args]
                specs.append(RunSpec(entry, seed, name, run_dir, tuple(args)))
        return specs


# ---------------------------------------------------------------------- run states
def find_per_case_csv(run_dir: Path) -> Path | None:
    """``<run_dir>/per_case.csv``, else the newest ``per_case.csv`` below ``run_dir``."""
    direct = run_dir / PER_CASE_FILE
    if direct.is_file():
        return direct
    found = sorted(run_dir.glob(f"**/{PER_CASE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_state(run_dir: Path) -> str:
    """``done`` (test outputs exist), ``fitted`` (fit finished, not tested), ``resume`` (a
    last.ckpt to continue from), ``stale`` (a config but no checkpoint) or ``new``."""
    if find_per_case_csv(run_dir) is not None:
        return "done"
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / FIT_DONE).is_file() and last.is_file():
        return "fitted"
    if last.is_file():
        return "resume"
    if (run_dir / "config.yaml").is_file():
        return "stale"
    return "new"


def _test_checkpoint(run_dir: Path, which: str) -> Path:
    if which == "best":
        best = sorted(
            (run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if best:
            return best[-1]
        raise FileNotFoundError(f"No best-*.ckpt in {run_dir / 'checkpoints'} to test")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"No {last} to test (did the fit save checkpoints?)")
    return last


def subprocess_runner(cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run ``cmd``, appending its stdout and stderr to ``log_path``; return the exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _execute(
    comparison: Comparison, spec: RunSpec, runner: Runner, log: Callable[[str], None]
) -> None:
    """Bring one run to the ``done`` state (see :func:`run_state`)."""
    state = run_state(spec.run_dir)
    if state == "done":
        log(f"  {spec.name}: finished, skipped")
        return
    if state == "stale":
        aside = spec.run_dir.with_name(f"{spec.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        spec.run_dir.rename(aside)
        log(f"  {spec.name}: no checkpoint from the last attempt, moved to {aside.name}")
        state = "new"
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.run_dir / "compare.log"
    env = {**os.environ, RUN_NAME_ENV: spec.name, "PYTHONUNBUFFERED": "1"}
    base = [comparison.python, "-m", "lightning_app"]
    if state in ("new", "resume"):
        cmd = [*base, "fit", *spec.args]
        if state == "resume":
            cmd.append(f"--ckpt_path={spec.run_dir / 'checkpoints' / 'last.ckpt'}")
        how = "continued from last.ckpt" if state == "resume" else "new"
        log(f"  {spec.name}: fit ({how}), output in {log_path}")
        start = time.monotonic()
        if runner(cmd, log_path, env) != 0:
            raise RuntimeError(
                f"Fit of {spec.name} failed; log {log_path}, last lines:\n{_tail(log_path)}"
            )
        (spec.run_dir / FIT_DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        log(f"  {spec.name}: fit done in {time.monotonic() - start:.0f} s")
    ckpt = _test_checkpoint(spec.run_dir, comparison.test_ckpt)
    start = time.monotonic()
    if runner([*base, "test", *spec.args, f"--ckpt_path={ckpt}"], log_path, env) != 0:
        raise RuntimeError(
            f"Test of {spec.name} failed; log {log_path}, last lines:\n{_tail(log_path)}"
        )
    if find_per_case_csv(spec.run_dir) is None:
        raise FileNotFoundError(
            f"The test of {spec.name} wrote no {PER_CASE_FILE} under {spec.run_dir}; log {log_path}"
        )
    log(f"  {spec.name}: test done in {time.monotonic() - start:.0f} s")


def run_comparison(
    comparison: Comparison,
    runner: Runner = subprocess_runner,
    report_only: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Train and test every missing run, then write the outputs (:func:`write_outputs`).

    Args:
        comparison: what to run.
        runner: ``runner(cmd, log_path, env) -> exit status`` (tests pass a fake).
        report_only: launch nothing; tabulate the runs that are finished.
        dry_run: print the commands of the missing runs and stop (nothing is written).
        log: progress printer.

    Returns:
        ``{output kind: path}`` of the files written (empty for a dry run).

    Raises:
        RuntimeError: a fit or test subprocess failed (its log path and last lines included).
        FileNotFoundError: no run is finished (``report_only``) or a test wrote no per-case file.
    """
    overlay = None if dry_run else comparison.logger_overlay()
    specs = comparison.plan(overlay)
    log(
        f"{comparison.name}: {len(comparison.entries)} rows x {len(comparison.seeds)} seeds on "
        f"{comparison.dataset} -> {comparison.out_dir} (W&B group {comparison.group})"
    )
    if dry_run:
        for spec in specs:
            state = run_state(spec.run_dir)
            log(f"[{state}] {spec.name}")
            if state != "done":
                log(f"  {comparison.python} -m lightning_app fit {' '.join(spec.args)}")
        return {}
    if not report_only:
        for i, spec in enumerate(specs, start=1):
            log(f"[{i}/{len(specs)}] {spec.entry.label}, seed {spec.seed}")
            _execute(comparison, spec, runner, log)
    finished = []
    for spec in specs:
        path = find_per_case_csv(spec.run_dir)
        if path is None:
            log(f"  missing: {spec.name} (not finished)")
            continue
        finished.append((spec, read_per_case_csv(path)))
    if not finished:
        raise FileNotFoundError(
            f"No finished run of this comparison under {comparison.runs_dir} "
            f"(expected {specs[0].run_dir / PER_CASE_FILE} and the like)"
        )
    return write_outputs(comparison, finished, log=log)


# ---------------------------------------------------------------------- outputs
def _fmt(value: float, std: float, bold: bool) -> str:
    if math.isnan(value):
        return "–"
    text = f"{value:.2f}" if math.isnan(std) else f"{value:.2f} ± {std:.2f}"
    return f"**{text}**" if bold else text


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(rows: Sequence[TableRow], titles: Sequence[str], reference: str | None) -> str:
    """The comparison table in Markdown (percent; ``**`` marks the best mean per column)."""
    head = ["Loss functions", *titles]
    if reference is not None:
        head += [f"p vs {reference}", "pairs"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|",
    ]
    for row in rows:
        cells = [row.label] + [_fmt(row.mean[t], row.std[t], t in row.best) for t in titles]
        if reference is not None:
            if row.is_reference:
                cells += ["(reference)", "–"]
            else:
                cells += [_fmt_p(row.p_value), str(row.n_pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def write_outputs(
    comparison: Comparison,
    finished: Sequence[tuple[RunSpec, object]],
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write the table (md, csv), the per-case CSV and the plots; log them to W&B.

    Args:
        finished: ``(run spec, CaseTable)`` of every finished run.

    Returns:
        ``{"markdown", "csv", "per_case", "per_class_plot", "curves_plot"[, "k_plot"]: path}``.
    """
    out = comparison.out_dir
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    stem = comparison.name
    runs = [RunScores(spec.entry.label, spec.seed, table, spec.run_dir) for spec, table in finished]
    columns = dataset_columns(comparison.dataset, runs[0].table.classes)
    labels = [e.label for e in comparison.entries]
    reference = comparison.reference
    rows = comparison_rows(runs, columns, labels, reference)
    reference_shown = reference if any(r.label == reference for r in rows) else None
    titles = [c.title for c in columns]
    paths: dict[str, Path] = {}

    # table CSV
    flat = [as_mapping(r) for r in rows]
    header = list(flat[0])
    paths["csv"] = out / f"{stem}.csv"
    _write_csv(paths["csv"], header, [[m[h] for h in header] for m in flat])

    # per-case CSV
    per_case_rows = []
    for spec, table in finished:
        for k, case in enumerate(table.cases):
            for c, cls in enumerate(table.classes):
                values = [
                    table.values[m][k, c] if m in table.values else math.nan
                    for m in PER_CASE_METRICS
                ]
                per_case_rows.append(
                    [spec.entry.label, spec.entry.key, spec.seed, spec.name, case, cls, *values]
                )
    paths["per_case"] = out / f"{stem}_per_case.csv"
    _write_csv(
        paths["per_case"],
        ["loss", "key", "seed", "run", "case", "class", *PER_CASE_METRICS],
        per_case_rows,
    )

    # plots
    where = f"{comparison.dataset}, {len(comparison.seeds)} seed(s)"
    bar_columns = [t for t in titles if t != "mIoU"] if comparison.dataset != "msseg2" else titles
    paths["per_class_plot"] = plot_columns(
        rows, bar_columns, out / f"{stem}_per_class_dice.png", f"Test scores ({where})"
    )
    curves = {
        label: [read_val_curve(spec.run_dir) for spec, _ in finished if spec.entry.label == label]
        for label in labels
        if any(spec.entry.label == label for spec, _ in finished)
    }
    curve_path = plot_curves(curves, out / f"{stem}_val_dice.png", f"Validation Dice ({where})")
    if curve_path is not None:
        paths["curves_plot"] = curve_path
    if comparison.mode == "sweepk":
        ks = [float(r.label.split("=", 1)[1]) for r in rows]
        paths["k_plot"] = plot_against(
            ks,
            rows,
            "mDice",
            out / f"{stem}_mdice_vs_k.png",
            f"CE + topK-Dice: mDice vs K ({where})",
        )

    # markdown
    table_md = markdown_table(rows, titles, reference_shown)
    paths["markdown"] = out / f"{stem}.md"
    paths["markdown"].write_text(
        _markdown_document(comparison, rows, table_md, reference_shown, paths, len(finished))
    )
    wandb_dir = log_to_wandb(comparison, header, flat, paths)
    for kind, path in paths.items():
        log(f"{kind:>15}: {path}")
    if wandb_dir is not None:
        log(f"{'W&B':>15}: {wandb_dir}")
    return paths


def _markdown_document(
    comparison: Comparison,
    rows: Sequence[TableRow],
    table_md: str,
    reference: str | None,
    paths: dict[str, Path],
    n_finished: int,
) -> str:
    seeds = ", ".join(map(str, comparison.seeds))
    title = "Loss comparison" if comparison.mode == "compare" else "CE + topK-Dice: sweep over K"
    expected = len(comparison.entries) * len(comparison.seeds)
    lines = [
        f"# {title} on {comparison.dataset}",
        "",
        f"Test-set scores in percent, mean ± standard deviation over the seeds ({seeds}); "
        "**bold**: the best mean of each column.",
    ]
    if reference is not None:
        lines.append(
            f"p: two-sided paired Wilcoxon signed-rank test (`scipy.stats.wilcoxon`) of each row "
            f"against {reference}, one pair per (seed, case) of per-case foreground-mean Dice; "
            "pairs: their number. The pairs share trained networks, so treat p as a screening "
            "statistic."
        )
    small = sorted({r.n_pairs for r in rows if 0 < r.n_pairs <= 5})
    if small:
        lines.append(
            f"With {' or '.join(map(str, small))} pairs a two-sided p cannot fall below "
            f"{2 / 2 ** max(small):.3g}: add seeds (`--seeds`) or test cases for a usable test."
        )
    if n_finished < expected:
        lines.append(f"\n**Incomplete: {n_finished} of {expected} runs finished.**")
    lines += ["", table_md, ""]
    for kind in ("per_class_plot", "curves_plot", "k_plot"):
        if kind in paths:
            lines.append(f"![{kind}]({paths[kind].name})")
    args = " ".join(comparison.user_args) or "(none)"
    lines += [""]
    if comparison.command:
        lines.append(f"- Command: `{comparison.command}`")
    lines += [
        f"- Overrides (ARGS): `{args}`",
        f"- Test checkpoint: {comparison.test_ckpt}; runs: `{comparison.runs_dir}/"
        f"{comparison.mode}-*` (W&B group `{comparison.group}`)",
        f"- Per-case scores: `{paths['per_case'].name}`; table: `{paths['csv'].name}`",
        f"- Written {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    return "\n".join(lines)


def log_to_wandb(
    comparison: Comparison,
    header: Sequence[str],
    flat: Sequence[dict],
    paths: dict[str, Path],
) -> str | None:
    """Log the table (``wandb.Table``) and the PNGs to a W&B run of their own, in the
    comparison's project and group (offline without credentials; nothing with
    ``WANDB_MODE=disabled``). Returns the run's local folder, or ``None`` when disabled."""
    mode = resolve_wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    data = [
        [None if isinstance(m[h], float) and math.isnan(m[h]) else m[h] for h in header]
        for m in flat
    ]
    run = wandb.init(
        project=f"topk-dice-{comparison.dataset}",
        group=comparison.group,
        job_type="comparison",
        name=f"{comparison.group}-{comparison.name}",
        dir=str(comparison.out_dir),
        mode=mode,
        config={
            "seeds": comparison.seeds,
            "args": comparison.user_args,
            "rows": [e.label for e in comparison.entries],
            "test_ckpt": comparison.test_ckpt,
        },
    )
    try:
        payload: dict[str, object] = {
            f"{comparison.name}/table": wandb.Table(columns=list(header), data=data)
        }
        for kind, path in paths.items():
            if path.suffix == ".png":
                payload[f"{comparison.name}/{kind}"] = wandb.Image(str(path))
        run.log(payload)
        return str(getattr(run.settings, "sync_dir", "") or comparison.out_dir)
    finally:
        run.finish()


# ---------------------------------------------------------------------- command line
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
            help="runs per row (default: 1 on the phantom, 3 elsewhere)",
        )
        p.add_argument("--first-seed", type=int, default=42, help="seeds are first..first+n-1")
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
        if name == "losses":
            p.add_argument(
                "--losses",
                nargs="+",
                default=list(PAPER_LOSSES),
                help="loss presets, in table order (space or comma separated)",
            )
            p.add_argument(
                "--reference",
                default=REFERENCE_LOSS,
                help="preset the others are tested against (default ce_dice)",
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
                help="K of the reference row of the tests (default 100 = CE + Dice)",
            )
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
    if opts.seeds is not None and opts.seeds < 1:
        raise ValueError(f"Expected argument `seeds` to be >= 1, but got {opts.seeds}")
    n_seeds = opts.seeds if opts.seeds is not None else default_seeds(opts.dataset)
    seeds = list(range(opts.first_seed, opts.first_seed + n_seeds))
    if opts.mode == "losses":
        losses = _split_words(opts.losses)
        entries = loss_entries(losses)
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
        print(f"note: the reference row {reference!r} is not part of this run: no p-values")
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
    )
    return run_comparison(comparison, report_only=opts.report_only, dry_run=opts.dry_run)


if __name__ == "__main__":
    main()
