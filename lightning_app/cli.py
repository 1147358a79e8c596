"""`python -m lightning_app {fit,validate,test,predict}`: the Lightning CLI of the template.

:class:`SegmentationCLI` is a plain ``LightningCLI`` that

- links ``data.num_classes``, ``data.class_names``, ``data.in_channels``, ``data.image_size``
  into the model (``apply_on="instantiate"``: read from the datamodule object right after it is
  built), and fills an unset ``model.test_protocol`` from ``data.protocol`` (one setting drives
  the training transforms and the test path; ``--model.test_protocol`` still overrides it);
- always adds the test report callback (:class:`lightning_app.reports.TestReport`, options
  ``--report.*``): ``test`` writes ``per_case.csv`` and ``summary.md`` into the run directory
  (``--report.save_predictions=true``: also ``predictions/<case>.nii.gz``); the poster table's
  row is named after the loss preset;
- gives every run its own directory (the *run directory*, ``trainer.default_root_dir``)::

      logs/<dataset>/<loss>/<run name>/
          config.yaml            resolved config (repeat or resume the run from it)
          checkpoints/           best-*.ckpt (by val/dice/mean, max) and last.ckpt
          csv/version_<n>/       CSV metrics, one version per fit attempt (resume -> next n)
          wandb/                 the W&B run (offline-run-* without credentials)

  ``<dataset>`` comes from the datamodule class (``PhantomDataModule -> phantom``), ``<loss>``
  from the ``configs/loss/<name>.yaml`` given with ``--config`` (else the loss class name), the
  run name from ``$LIGHTNING_APP_RUN_NAME``, ``$SLURM_JOB_ID``, torchrun's run id, or else the
  launch time plus a random suffix. ``test``, ``validate`` and ``predict`` are runs of their
  own: without ``$LIGHTNING_APP_RUN_NAME`` their name is ``[<launcher name>-]<subcommand>-<time>-
  <random>`` (:func:`eval_run_name`), so ``make eval`` after ``make train`` in one SLURM job
  never writes into the training run. A run directory given with
  ``--trainer.default_root_dir`` (or a name given with ``$LIGHTNING_APP_RUN_NAME``) is used as
  is; when such a directory already holds a run's ``config.yaml``, a ``test`` / ``validate`` /
  ``predict`` saves its config as ``config-<subcommand>.yaml`` instead, so a training run's
  files are never rewritten by another command. Loggers whose ``save_dir`` is unset or ``.``, and ``ModelCheckpoint`` callbacks
  without ``dirpath``, are pointed into the run directory; the W&B logger gets ``id`` and
  ``name`` = run name, project ``topk-dice-<dataset>``, group ``<dataset>/<loss>`` and tags
  ``[<dataset>, <loss>]`` unless set. These derived values are recomputed from the run directory
  at every launch and are not written into ``config.yaml``, so
  ``--config <run>/config.yaml --ckpt_path last`` continues the run (same checkpoints folder,
  same W&B run id) and ``--config <run>/config.yaml --trainer.default_root_dir=null`` repeats it
  as a new run. A ``fit`` that SLURM restarts (``$SLURM_RESTART_COUNT`` > 0: ``sbatch --requeue``
  and a preemption, a time limit or ``scontrol requeue``) finds its run directory by the same
  job id and resumes from its newest checkpoint (:mod:`lightning_app.checkpoints`) by itself.
- ``WANDB_MODE=disabled`` removes W&B loggers (CSV only).

Everything else (model, optimizer, scheduler, trainer, callbacks, seed) comes from the yaml
files: ``configs/base.yaml`` + ``configs/data/<dataset>.yaml`` + ``configs/loss/<loss>.yaml``.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from torch import nn

from datamodules.nnunet_layout import DatasetError
from lightning_app.checkpoints import resume_checkpoint, slurm_restart_count
from lightning_app.loggers import resolve_wandb_mode
from lightning_app.reports import TestReport
from models import SegmentationModel

__all__ = [
    "SegmentationCLI",
    "check_batch_norm_batch_size",
    "main",
    "RUN_NAME_ENV",
    "dataset_name",
    "eval_run_name",
    "loss_name",
    "run_name",
]

#: Environment variable naming the run; the CLI sets it when it invents a name, so the DDP
#: worker processes that Lightning launches (which re-run the same command) agree on the run
#: directory. Set it yourself (on every node) to name a multi-node run.
RUN_NAME_ENV = "LIGHTNING_APP_RUN_NAME"

_WANDB_LOGGERS = ("WandbLogger",)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _class_name(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def dataset_name(cfg: Namespace) -> str:
    """``data.class_path`` ``datamodules.PhantomDataModule`` -> ``phantom``
    (``ACDCDataModule -> acdc``, ``MSSEG2DataModule -> msseg2``); an nnU-Net dataset is named
    by its folder (``--data.raw_dir=.../Dataset900_Phantom`` -> ``Dataset900_Phantom``)."""
    data = cfg.get("data") or Namespace()
    name = re.sub(r"_?DataModule$", "", _class_name(getattr(data, "class_path", None)))
    raw_dir = (getattr(data, "init_args", None) or Namespace()).get("raw_dir")
    if name == "NNUNet" and raw_dir:
        return Path(str(raw_dir)).resolve().name
    return name.lower() or "data"


def loss_name(cfg: Namespace) -> str:
    """The loss preset name: the stem of the last ``--config`` file inside a ``loss`` folder
    (``configs/loss/ce_topk_dice.yaml -> ce_topk_dice``), else the ``<loss>`` folder of a run's
    saved config given with ``--config`` (``logs/<dataset>/<loss>/<run>/config.yaml``, so
    ``test --config <run>/config.yaml`` keeps the name), else the snake-cased class name of
    ``model.loss`` (``TopKDiceLoss -> top_k_dice_loss``)."""
    paths = [Path(str(getattr(p, "absolute", None) or p)) for p in cfg.get("config") or []]
    for p in reversed(paths):
        if p.parent.name == "loss":
            return p.stem
    dataset = dataset_name(cfg)
    for p in reversed(paths):
        if p.name == "config.yaml" and p.parent.parent.parent.name == dataset:
            return p.parent.parent.name
    loss = (cfg.get("model") or Namespace()).get("loss")
    name = _class_name(getattr(loss, "class_path", None))
    return _snake(name) if name else "loss"


def _ignore_index(datamodule: Any) -> int | None:
    """The datamodule's ignore label (``NNUNetDataModule``), else ``None``."""
    return getattr(datamodule, "ignore_index", None)


def _env_rank() -> int:
    """Global rank of this process as known before the Trainer starts (0 if unknown)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = os.environ.get("LOCAL_RANK", "")
    node = os.environ.get("NODE_RANK", "0")
    if local.isdigit():
        return int(local) + (int(node) if node.isdigit() else 0)
    return 0


def run_name() -> str:
    """The run name: ``$LIGHTNING_APP_RUN_NAME``, else ``slurm-<job id>``, else
    ``torchrun-<run id>``, else ``YYYYmmdd-HHMMSS-<6 hex>`` (which is then exported in
    ``$LIGHTNING_APP_RUN_NAME`` for Lightning's DDP worker processes)."""
    name = os.environ.get(RUN_NAME_ENV)
    if name:
        return name
    if os.environ.get("SLURM_JOB_ID"):
        name = f"slurm-{os.environ['SLURM_JOB_ID']}"
    elif os.environ.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        name = f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    else:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    os.environ[RUN_NAME_ENV] = name
    return name


def _launcher_name() -> str | None:
    """``slurm-<job id>`` or ``torchrun-<run id>`` when such a launcher started us."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    return None


def _external_world_size() -> int:
    """Processes started by an external launcher (torchrun, srun), 1 if none."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def eval_run_name(subcommand: str) -> str:
    """The run name of a ``test`` / ``validate`` / ``predict`` without ``$LIGHTNING_APP_RUN_NAME``:
    ``[slurm-<job id>-|torchrun-<run id>-]<subcommand>-YYYYmmdd-HHMMSS-<6 hex>``, exported in
    ``$LIGHTNING_APP_RUN_NAME`` for Lightning's DDP worker processes. Under an external
    multi-process launcher (``WORLD_SIZE`` or ``SLURM_NTASKS`` > 1), whose processes cannot
    share a random name, it is ``<launcher name>-<subcommand>[-step<SLURM_STEP_ID>]``."""
    base = _launcher_name()
    if _external_world_size() > 1 and base:
        step = os.environ.get("SLURM_STEP_ID", "")
        name = f"{base}-{subcommand}" + (f"-step{step}" if step.isdigit() else "")
    else:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        name = f"{base}-{subcommand}-{stamp}" if base else f"{subcommand}-{stamp}"
    os.environ[RUN_NAME_ENV] = name
    return name


def check_batch_norm_batch_size(model: nn.Module, datamodule: Any) -> None:
    """Raise before training when a network with BatchNorm would train on single samples.

    Raises:
        ValueError: ``datamodule.batch_size == 1`` and ``model`` has a BatchNorm layer.
    """
    if getattr(datamodule, "batch_size", None) != 1:
        return
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if names:
        raise ValueError(
            "Expected argument `data.batch_size` to be >= 2 for a network with BatchNorm "
            f"({len(names)} layers, e.g. {names[0]!r}), but got 1: BatchNorm cannot train on "
            "one slice per batch. Use --data.batch_size=2 or more."
        )


def _is(entry: Any, names: tuple[str, ...]) -> bool:
    return isinstance(entry, Namespace) and _class_name(entry.get("class_path")) in names


def _as_list(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


class SegmentationCLI(LightningCLI):
    """The template's ``LightningCLI`` (see the module docstring for what it adds).

    Construct as ``SegmentationCLI(args=[...], run=False)`` to parse and build without running
    (used by the tests); ``main()`` runs it from ``sys.argv``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", SegmentationModel)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        save_kwargs = {"overwrite": True, **kwargs.pop("save_config_kwargs", {})}
        kwargs["save_config_kwargs"] = save_kwargs
        self.run_dir: str | None = None
        self._generated_name = False
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("num_classes", "class_names", "in_channels", "image_size"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        parser.link_arguments("data", "model.ignore_index", _ignore_index, apply_on="instantiate")
        # always-on test report (per_case.csv, summary.md): --report.save_predictions=true
        parser.add_lightning_class_args(TestReport, "report")
        parser.add_argument(
            "--save_predictions",
            action=ActionYesNo,
            default=False,
            help="test: also write each case's predicted mask (same as --report.save_predictions)",
        )

    # ---------------------------------------------------------------- run directory
    def _sub_config(self, config: Namespace) -> Namespace:
        return config[self.subcommand] if self.subcommand else config

    def before_instantiate_classes(self) -> None:
        cfg = self._sub_config(self.config)
        dataset, loss = dataset_name(cfg), loss_name(cfg)
        trainer = cfg.trainer
        if trainer.get("default_root_dir") is None:
            self._generated_name = not os.environ.get(RUN_NAME_ENV)
            if self.subcommand in (None, "fit") or not self._generated_name:
                name = run_name()
            else:  # an evaluation is a run of its own (never the training run's directory)
                name = eval_run_name(self.subcommand)
            trainer.default_root_dir = os.path.join("logs", dataset, loss, name)
        self.run_dir = os.fspath(trainer.default_root_dir)
        if resolve_wandb_mode() == "disabled":
            loggers = [lg for lg in _as_list(trainer.get("logger")) if not _is(lg, _WANDB_LOGGERS)]
            trainer.logger = loggers or False
        config_file = os.path.join(self.run_dir, "config.yaml")
        if self.subcommand == "fit" and cfg.get("ckpt_path") is None and slurm_restart_count():
            # a requeued SLURM job (preemption, time limit, `scontrol requeue`) continues its run
            resume = resume_checkpoint(self.run_dir)
            if resume is not None:
                cfg.ckpt_path = os.fspath(resume)
            if _env_rank() == 0:
                job = f"SLURM job {os.environ.get('SLURM_JOB_ID')}, restart {slurm_restart_count()}"
                what = f"resuming from {resume}" if resume else "no checkpoint yet, starting again"
                print(f"{job}: {what} in {self.run_dir}", flush=True)
        elif (
            self.subcommand == "fit"
            and cfg.get("ckpt_path") is None
            and _env_rank() == 0
            and os.path.isfile(config_file)
        ):
            raise ValueError(
                f"The run directory {self.run_dir} already holds a run ({config_file}). "
                "Pass `--ckpt_path last` to continue it, or `--trainer.default_root_dir=<new dir>` "
                "(or `=null` for a fresh name) to start a new run."
            )
        if self.subcommand not in (None, "fit") and os.path.isfile(config_file):
            # a given directory that holds a run: never rewrite that run's config
            config_file = os.path.join(self.run_dir, f"config-{self.subcommand}.yaml")
        # SaveConfigCallback joins this to trainer.log_dir; an absolute path wins the join, so
        # the config lands in the run directory whichever logger comes first.
        self.save_config_kwargs["config_filename"] = os.path.abspath(config_file)
        self._run_info = {"dataset": dataset, "loss": loss, "name": Path(self.run_dir).name}

    def _resolved(self, config: Namespace) -> Namespace:
        """A copy of ``config`` with the run-directory-derived values filled in."""
        config = config.clone()
        cfg = self._sub_config(config)
        info, run_dir = self._run_info, self.run_dir
        for lg in _as_list(cfg.trainer.get("logger")):
            if not isinstance(lg, Namespace):
                continue
            args = lg.get("init_args")
            if args is None:
                lg.init_args = args = Namespace()
            if args.get("save_dir") in (None, ".", "./"):
                args.save_dir = run_dir
            if _is(lg, _WANDB_LOGGERS):
                defaults = {
                    "id": info["name"],
                    "name": info["name"],
                    "project": f"topk-dice-{info['dataset']}",
                    "group": f"{info['dataset']}/{info['loss']}",
                    "tags": [info["dataset"], info["loss"]],
                }
                for key, value in defaults.items():
                    if args.get(key) is None:
                        args[key] = value
        for cb in _as_list(cfg.trainer.get("callbacks")):
            if _is(cb, ("ModelCheckpoint",)):
                if cb.init_args.get("dirpath") is None:
                    cb.init_args.dirpath = os.path.join(run_dir, "checkpoints")
        model, data_args = cfg.get("model"), (cfg.get("data") or Namespace()).get("init_args")
        if model is not None and model.get("test_protocol") is None and data_args is not None:
            # one setting drives both: the model tests under the data's protocol unless set
            if data_args.get("protocol") is not None:
                model.test_protocol = data_args.protocol
        if cfg.get("report") is not None:
            if cfg.report.get("label") is None:
                cfg.report.label = info["loss"]  # the poster table's row name
            if cfg.get("save_predictions"):
                cfg.report.save_predictions = True
        return config

    def instantiate_classes(self) -> None:
        unresolved = self.config
        self.config = self._resolved(unresolved)
        try:
            super().instantiate_classes()
        finally:
            self.config = unresolved
        # the saved config keeps the derived values unresolved (see module docstring)
        for cb in self.trainer.callbacks:
            if isinstance(cb, SaveConfigCallback):
                cb.config = self._sub_config(unresolved)

    def before_fit(self) -> None:
        """Refuse ``batch_size=1`` with BatchNorm before anything is written."""
        check_batch_norm_batch_size(self.model, self.datamodule)

    def _forget_generated_name(self) -> None:
        # a later CLI call in the same Python process must invent its own run name
        if self._generated_name and _env_rank() == 0:
            os.environ.pop(RUN_NAME_ENV, None)

    def after_fit(self) -> None:
        self._forget_generated_name()

    def after_validate(self) -> None:
        self._forget_generated_name()

    def after_test(self) -> None:
        self._forget_generated_name()

    def after_predict(self) -> None:
        self._forget_generated_name()


def main(args: list[str] | None = None) -> SegmentationCLI:
    """Entry point of ``python -m lightning_app``; ``args`` defaults to ``sys.argv[1:]``.
    A bad raw dataset (``DatasetError``) ends the run with its one-line message, exit code 2."""
    try:
        return SegmentationCLI(args=args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
