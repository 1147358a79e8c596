"""Named loss presets: each is one file, ``configs/loss/<name>.yaml``, read here and by the CLI.

A preset file sets ``model.loss`` (``class_path`` + ``init_args``, the Lightning CLI's form)
and may give ``name:``, the row title in comparisons::

    name: CE + topK-Dice
    model:
      loss:
        class_path: losses.CompoundLoss
        init_args: {terms: {ce: {class_path: losses.CrossEntropyLoss}, ...}, weights: ...}

:func:`build_loss` builds the same module outside the CLI (tests, benchmarks, notebooks).
The files live in the repository's ``configs/loss/`` (the package is installed editable).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from torch import nn

#: The repository's loss presets.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "loss"
#: The poster's rows, in its order.
POSTER_PRESETS = ("ce", "ce_dice", "focal_dice", "topk_ce_dice", "ce_topk_dice")


def preset_names(config_dir: Path = CONFIG_DIR) -> tuple[str, ...]:
    """The presets in ``config_dir``: the stems of its ``*.yaml`` files, sorted."""
    return tuple(sorted(path.stem for path in Path(config_dir).glob("*.yaml")))


def read_preset(name: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The parsed ``<config_dir>/<name>.yaml``.

    Raises:
        ValueError: no such file, or a file without ``model.loss.class_path``.
    """
    path = Path(config_dir) / f"{name}.yaml"
    if not path.is_file():
        known = preset_names(config_dir)
        raise ValueError(f"Expected argument `name` to be one of {known}, but got {name!r}")
    config = yaml.safe_load(path.read_text()) or {}
    loss = (config.get("model") or {}).get("loss")
    if not isinstance(loss, dict) or "class_path" not in loss:
        raise ValueError(f"{path}: expected `model.loss` with a `class_path`")
    return config


def preset_title(name: str, config_dir: Path = CONFIG_DIR) -> str:
    """The preset's ``name:`` (its row title), else ``name`` itself."""
    return str(read_preset(name, config_dir).get("name") or name)


def build_loss(name: str, **overrides: Any) -> nn.Module:
    """Build the loss of ``configs/loss/<name>.yaml``, with constructor arguments overridden.

    ``build_loss("topk_dice", k=5)`` sets an argument of a single loss. For a compound preset
    an argument goes to every term that accepts it (``ignore_index=255``), or to one term when
    prefixed by its name (``build_loss("ce_topk_dice", topk_dice__k=5)``), and ``weights=``
    replaces the weights.

    Raises:
        ValueError: an unknown preset, or an override that no term accepts.
    """
    spec = copy.deepcopy(read_preset(name)["model"]["loss"])
    unused = _override(spec, dict(overrides))
    if unused:
        raise ValueError(f"Overrides {unused} are not accepted by any term of preset {name!r}")
    return instantiate(spec)


def instantiate(spec: Any) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` (nested ones too, as in ``terms``)."""
    if isinstance(spec, dict) and "class_path" in spec:
        cls = _import(spec["class_path"])
        return cls(**{k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    if isinstance(spec, dict):
        return {k: instantiate(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    return spec


def _override(spec: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """Write ``overrides`` into ``spec``'s ``init_args`` (see :func:`build_loss`); return the
    names that nothing accepted."""
    terms = (spec.get("init_args") or {}).get("terms")
    if not isinstance(terms, dict):  # a single loss
        unused = [key for key in overrides if not _accepts(spec, key)]
        spec.setdefault("init_args", {}).update(overrides)
        return sorted(unused)
    unused = []
    if "weights" in overrides:
        spec["init_args"]["weights"] = overrides.pop("weights")
    for key, value in overrides.items():
        term, sep, arg = key.partition("__")
        if sep:
            targets = [terms[term]] if term in terms and _accepts(terms[term], arg) else []
        else:
            arg, targets = key, [t for t in terms.values() if _accepts(t, key)]
        for target in targets:
            target.setdefault("init_args", {})[arg] = value
        if not targets:
            unused.append(key)
    return sorted(unused)


def _accepts(spec: dict[str, Any], arg: str) -> bool:
    return arg in inspect.signature(_import(spec["class_path"])).parameters


def _import(class_path: str) -> Any:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


#: Row titles of the poster's presets, by preset name, in the poster's order.
PAPER_LOSSES: dict[str, str] = {
    name: preset_title(name) if (CONFIG_DIR / f"{name}.yaml").is_file() else name
    for name in POSTER_PRESETS
}
#: Every preset of the repository (``configs/loss/*.yaml``).
PRESETS: tuple[str, ...] = preset_names()
