"""`python -m lightning_app {fit,validate,test,predict}`: the Lightning CLI of the template.

:class:`SegmentationCLI` is a plain ``LightningCLI`` that

- links ``data.{num_classes,class_names,in_channels,image_size}`` into the model
  (``apply_on="instantiate"``) and fills an unset ``model.test_protocol`` from ``data.protocol``;
- always adds the test report callback (:class:`lightning_app.callbacks.TestReport`, ``--report.*``);
- gives every run its own directory ``logs/<dataset>/<loss>/<run name>/`` (:mod:`lightning_app.run_dir`)
  with ``config.yaml``, ``checkpoints/``, ``csv/`` and ``wandb/``, and points loggers, checkpoints
  and the W&B run (id, name, project, group, tags) into it. These derived values are not saved
  in ``config.yaml``, so ``--config <run>/config.yaml --ckpt_path last`` continues a run; a
  requeued SLURM ``fit`` resumes by itself (:mod:`lightning_app.checkpoints`);
- drops W&B loggers under ``WANDB_MODE=disabled`` (CSV only);
- refuses abbreviated flags, and checks before a fit writes anything that the network accepts
  the image size (:mod:`lightning_app.preflight`).

Everything else comes from ``configs/{base.yaml,data/,experiment/,loss/,trainer/}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from torch import nn

from lightning_app.callbacks.test_report import TestReport
from lightning_app.checkpoints import resume_checkpoint, slurm_restart_count
from lightning_app.loggers import resolve_wandb_mode
from lightning_app.preflight import run_fit_checks
from lightning_app.run_dir import (
    RUN_NAME_ENV,
    class_name,
    dataset_name,
    env_rank,
    eval_run_name,
    loss_name,
    run_name,
)
from models import SegmentationModel

__all__ = ["SegmentationCLI", "check_batch_norm_batch_size", "main"]

_WANDB_LOGGERS = ("WandbLogger",)


def _ignore_index(datamodule: Any) -> int | None:
    """The datamodule's ignore label (``NNUNetDataModule``), else ``None``."""
    return getattr(datamodule, "ignore_index", None)


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
    return isinstance(entry, Namespace) and class_name(entry.get("class_path")) in names


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

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # `--trainer.max_epoch=1` must fail, not be taken for `--trainer.max_epochs`
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("num_classes", "class_names", "in_channels", "image_size"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        parser.link_arguments("data", "model.ignore_index", _ignore_index, apply_on="instantiate")
        # always-on test report (per_case.csv, summary.md): --report.save_predictions=true
        parser.add_lightning_class_args(TestReport, "report")
        # a loss config's row title in comparisons (configs/loss/*.yaml `name:`); unused here
        parser.add_argument("--name", type=str | None, default=None, help="loss config title")
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
        """Fix the run directory, W&B mode, SLURM resume and where ``config.yaml`` is saved.

        A directory given with ``--trainer.default_root_dir`` (or a name given with
        ``$LIGHTNING_APP_RUN_NAME``) is used as is; when it already holds a run's
        ``config.yaml``, a ``test`` / ``validate`` / ``predict`` saves ``config-<subcommand>.yaml``
        instead, and a ``fit`` without ``--ckpt_path`` is refused.
        """
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
            if env_rank() == 0:
                job = f"SLURM job {os.environ.get('SLURM_JOB_ID')}, restart {slurm_restart_count()}"
                what = f"resuming from {resume}" if resume else "no checkpoint yet, starting again"
                print(f"{job}: {what} in {self.run_dir}", flush=True)
        elif (
            self.subcommand == "fit"
            and cfg.get("ckpt_path") is None
            and env_rank() == 0
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
            if _is(cb, ("ModelCheckpoint", "BestAndLastCheckpoint")):
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
        """Before anything is written: refuse ``batch_size=1`` with BatchNorm and an image
        size the network rejects; warn about bf16 on a CPU without it (:mod:`.preflight`)."""
        check_batch_norm_batch_size(self.model, self.datamodule)
        run_fit_checks(self)

    def _forget_generated_name(self) -> None:
        # a later CLI call in the same Python process must invent its own run name
        if self._generated_name and env_rank() == 0:
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
    """Entry point of ``python -m lightning_app``; ``args`` defaults to ``sys.argv[1:]``
    (``__main__`` wraps it in :func:`lightning_app.errors.run_reporting_errors`)."""
    return SegmentationCLI(args=args)
