"""Run names and run directories: ``logs/<dataset>/<loss>/<run name>/``.

``<dataset>`` comes from the datamodule class (``PhantomDataModule -> phantom``), ``<loss>``
from the ``configs/loss/<name>.yaml`` given with ``--config`` (else the loss class name). A
``fit`` is named ``$LIGHTNING_APP_RUN_NAME``, else ``slurm-<job id>``, ``torchrun-<run id>``, or
the launch time plus a random suffix (:func:`run_name`). ``test``, ``validate`` and ``predict``
are runs of their own, ``[<launcher name>-]<subcommand>-<time>-<random>``
(:func:`eval_run_name`), so an evaluation never writes into a training run. An invented name is
exported in ``$LIGHTNING_APP_RUN_NAME`` so that Lightning's DDP workers agree on the directory.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from jsonargparse import Namespace

__all__ = [
    "RUN_NAME_ENV",
    "class_name",
    "dataset_name",
    "env_rank",
    "eval_run_name",
    "loss_name",
    "run_name",
]

#: Environment variable naming the run; the CLI sets it when it invents a name, so the DDP
#: worker processes that Lightning launches (which re-run the same command) agree on the run
#: directory. Set it yourself (on every node) to name a multi-node run.
RUN_NAME_ENV = "LIGHTNING_APP_RUN_NAME"

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def class_name(class_path: str | None) -> str:
    """``"datamodules.PhantomDataModule"`` -> ``"PhantomDataModule"`` (``""`` for ``None``)."""
    return (class_path or "").rsplit(".", 1)[-1]


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def dataset_name(cfg: Namespace) -> str:
    """``data.class_path`` ``datamodules.PhantomDataModule`` -> ``phantom``
    (``ACDCDataModule -> acdc``, ``MSSEG2DataModule -> msseg2``)."""
    name = class_name(getattr(cfg.get("data") or Namespace(), "class_path", None))
    name = re.sub(r"_?DataModule$", "", name)
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
    name = class_name(getattr(loss, "class_path", None))
    return _snake(name) if name else "loss"


def env_rank() -> int:
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
