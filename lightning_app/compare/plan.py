"""What to run: the rows (losses or K values), the seeds, the cross-validation folds, the
settings hash that names the runs, and the CLI arguments of every (row, seed[, fold]) run (see
:mod:`lightning_app.compare`).

With folds (``--folds 0 1 2 3 4``, datamodules with a ``fold`` argument: nnU-Net datasets),
every (row, seed) is trained once per fold with ``--data.fold=<k> --data.test_split=held_out``,
so each training case is tested exactly once, by the fold that held it out; the per-case scores
of a seed's folds together form that seed's case set."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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
#: Seeds per loss when ``--seeds`` is not given: three (mean ± std, and 3 x 16 Wilcoxon pairs on
#: the phantom's 16 test volumes).
_DEFAULT_SEEDS: dict[str, int] = {}
_FALLBACK_SEEDS = 3
#: Overrides that the comparison sets itself and that ARGS must not touch.
_RESERVED = ("--seed_everything", "--trainer.default_root_dir", "--ckpt_path")
#: ... and those it sets when it runs folds.
_FOLD_KEYS = ("--data.fold", "--data.test_split")

Runner = Callable[[list[str], Path, dict[str, str]], int]


def default_seeds(dataset: str) -> int:
    """Seeds per row when none are requested: 3 on every dataset, the phantom included."""
    return _DEFAULT_SEEDS.get(dataset, _FALLBACK_SEEDS)


@dataclass(frozen=True)
class Entry:
    """One table row: ``label`` (as printed), ``key`` (in run names), the loss preset, and
    extra CLI arguments (the K override of a sweep)."""

    label: str
    key: str
    loss: str
    extra_args: tuple[str, ...] = ()


def loss_entries(losses: Sequence[str], configs_dir: Path = Path("configs")) -> list[Entry]:
    """Rows for loss presets, titled by the ``name:`` of ``configs/loss/<preset>.yaml``
    (``ce_topk_dice -> "CE + topK-Dice"``), else by the preset name.

    Raises:
        ValueError: an empty or repeated list.
    """
    losses = list(losses)
    if not losses:
        raise ValueError("Expected argument `losses` to name at least one loss preset, got none")
    if len(set(losses)) != len(losses):
        raise ValueError(f"Expected argument `losses` without repeats, but got {losses}")
    return [Entry(loss_title(name, configs_dir), name, name) for name in losses]


def loss_title(name: str, configs_dir: Path = Path("configs")) -> str:
    """The ``name:`` of ``<configs_dir>/loss/<name>.yaml``, else ``name`` (also when the file
    is missing: :class:`Comparison` reports that)."""
    path = Path(configs_dir) / "loss" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    title = config.get("name") if isinstance(config, dict) else None
    return str(title) if title else name


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
    """One (row, seed[, fold]) run: its name, directory and the common CLI arguments of fit and
    test; ``fold`` is ``None`` without cross-validation."""

    entry: Entry
    seed: int
    name: str
    run_dir: Path
    args: tuple[str, ...]
    fold: int | None = None


@dataclass
class Comparison:
    """A comparison to run and tabulate.

    Attributes:
        dataset: ``configs/data/<dataset>.yaml`` must exist.
        entries: the rows (:func:`loss_entries` or :func:`sweep_k_entries`).
        seeds: the seeds, one run per row and seed (``seed_everything``).
        user_args: Lightning CLI overrides applied to every run (``ARGS``), last.
        out_dir: outputs; runs in ``out_dir/runs`` (default ``results/<data_name>``).
        name: file stem of the outputs (``comparison`` or ``sweep_k``).
        mode: ``compare`` or ``sweepk`` (prefix of run names and of the W&B group).
        reference: label of the row the others are tested against (``None``: none).
        test_ckpt: ``last`` (TransUNet's protocol: the final model) or ``best`` (best
            ``val/dice/mean``).
        folds: cross-validation folds (module docstring); ``None``: one run per row and seed
            on the dataset's own split.
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
    folds: list[int] | None = None

    @property
    def data_name(self) -> str:
        """The name the tables and plots give the data: the folder of a ``--data.raw_dir``
        override (an nnU-Net dataset, ``Dataset900_Phantom``), else :attr:`dataset`."""
        raw_dir = None
        args = list(self.user_args)
        for i, arg in enumerate(args):
            if arg.startswith("--data.raw_dir="):
                raw_dir = arg.split("=", 1)[1]
            elif arg == "--data.raw_dir" and i + 1 < len(args):
                raw_dir = args[i + 1]
        return Path(raw_dir.rstrip("/")).name if raw_dir else self.dataset

    def __post_init__(self) -> None:
        self._hashes: dict[str, str] = {}
        self.out_dir = Path(self.out_dir or Path("results") / self.data_name)
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
        if self.folds is not None:
            self._check_folds(data_cfg)
        labels = [e.label for e in self.entries]
        if self.reference is not None and self.reference not in labels:
            self.reference = None

    def _check_folds(self, data_cfg: Path) -> None:
        """Folds: distinct ints >= 0, a datamodule with ``fold`` and ``test_split`` arguments,
        and no fold setting in the overrides."""
        folds = list(self.folds or [])
        if not folds:
            raise ValueError("Expected argument `folds` to name at least one fold, but got none")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in folds):
            raise ValueError(f"Expected argument `folds` to hold fold numbers >= 0, got {folds}")
        if len(set(folds)) != len(folds):
            raise ValueError(f"Expected argument `folds` without repeats, but got {folds}")
        data = (yaml.safe_load(data_cfg.read_text()) or {}).get("data") or {}
        class_path = str(data.get("class_path", ""))
        try:
            module, _, name = class_path.rpartition(".")
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            params = {}
        if "fold" not in params or "test_split" not in params:
            raise ValueError(
                f"--folds needs a datamodule with `fold` and `test_split` arguments (nnU-Net "
                f"datasets: DATASET=nnunet); {data_cfg} uses {class_path or 'no class_path'}"
            )
        for arg in self.user_args:
            key = arg.split("=", 1)[0]
            if key in _FOLD_KEYS:
                raise ValueError(
                    f"With --folds the comparison sets {key} itself; remove it from the "
                    f"overrides (ARGS): {' '.join(self.user_args)}"
                )
        self.folds = folds

    # ------------------------------------------------------------------ configuration
    @property
    def runs_dir(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "runs"

    def loss_config(self, entry: Entry) -> Path:
        return self.configs_dir / "loss" / f"{entry.loss}.yaml"

    def common_configs(self) -> list[Path]:
        """Shared by every run: ``base.yaml``, ``data/<dataset>.yaml``, then where they exist
        the dataset's training recipe ``experiment/<dataset>.yaml`` and the comparison
        protocol ``experiment/compare_<dataset>.yaml``."""
        files = [self.configs_dir / "base.yaml", self.configs_dir / "data" / f"{self.dataset}.yaml"]
        experiments = self.configs_dir / "experiment"
        extra = [experiments / f"{self.dataset}.yaml", experiments / f"compare_{self.dataset}.yaml"]
        return files + [p for p in extra if p.is_file()]

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

    @property
    def n_runs(self) -> int:
        """Rows x seeds (x folds)."""
        return len(self.entries) * len(self.seeds) * len(self.folds or [None])

    def plan(self, overlay: Path | None) -> list[RunSpec]:
        """Every (row, seed[, fold]) run, rows first, then seeds, then folds, in table order."""
        specs = []
        for entry in self.entries:
            digest = self.settings_hash(entry)
            for seed in self.seeds:
                for fold in self.folds or [None]:
                    tag = "" if fold is None else f"-fold{fold}"
                    name = f"{self.mode}-{entry.key}-seed{seed}{tag}-{digest}"
                    run_dir = self.runs_dir / name
                    args = [f"--config={p}" for p in self.common_configs()]
                    args.insert(2, f"--config={self.loss_config(entry)}")
                    if overlay is not None:
                        args.append(f"--config={overlay}")
                    args += [f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}"]
                    if fold is not None:
                        args += [f"--data.fold={fold}", "--data.test_split=held_out"]
                    args += [*entry.extra_args, *self.user_args]
                    specs.append(RunSpec(entry, seed, name, run_dir, tuple(args), fold))
        return specs
