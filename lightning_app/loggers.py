"""W&B logger that never prompts: online with credentials, offline without.

Mode resolution (:func:`resolve_wandb_mode`), first match wins:

1. ``WANDB_MODE`` in the environment (``online``, ``offline``, ``disabled``; ``dryrun`` means
   offline). ``WANDB_MODE=disabled`` is the documented switch that turns W&B off: the CLI then
   drops the W&B logger entirely and only the CSV logger runs.
2. ``WANDB_API_KEY`` set -> ``online``.
3. A ``~/.netrc`` (or ``$NETRC``) entry for the W&B host (``$WANDB_BASE_URL``, default
   ``api.wandb.ai``; ``wandb login`` writes it) -> ``online``.
4. Otherwise ``offline``: the run is written under ``<save_dir>/wandb/offline-run-*`` and can be
   uploaded later with ``wandb sync <that dir>``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WandbLogger", "resolve_wandb_mode", "has_wandb_credentials"]

WandbMode = Literal["online", "offline", "disabled"]


def has_wandb_credentials() -> bool:
    """True if ``WANDB_API_KEY`` is set or the netrc file has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not host or not path.is_file():
        return False
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode() -> WandbMode:
    """The W&B mode for this process (see the module docstring for the order).

    Raises:
        ValueError: if ``WANDB_MODE`` holds something other than online/offline/disabled/dryrun.
    """
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env == "dryrun":
            return "offline"
        if env not in ("online", "offline", "disabled"):
            raise ValueError(
                "Expected environment variable `WANDB_MODE` to be one of online, offline, "
                f"disabled (or dryrun), but got {env!r}"
            )
        return env  # type: ignore[return-value]
    return "online" if has_wandb_credentials() else "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with automatic online/offline mode and a clean finish.

    Differences from the parent:

    - ``offline=None`` (default) picks the mode with :func:`resolve_wandb_mode`, so a machine
      without W&B credentials runs offline instead of prompting for a key. ``True``/``False``
      force offline/online. The mode is passed to ``wandb.init(mode=...)``; unlike the parent,
      the process environment is not modified.
    - ``finalize`` finishes the W&B run (so several fits in one Python process each get their
      own run, or resume the same one when ``id`` is fixed), remembering its id.

    Args:
        name: run display name. save_dir: folder that receives ``wandb/`` (the CLI sets it to
        the run directory). id: run id (the CLI sets it to the run name so ``--ckpt_path last``
        continues the same W&B run). project, group, tags, job_type: as in ``wandb.init``.
        offline: ``None`` (auto), ``True`` or ``False``. log_model: upload checkpoints as
        artifacts (online only). prefix, checkpoint_name: as in the parent.
        **kwargs: further ``wandb.init`` arguments (``entity``, ``notes``, ``config``, ...).

    Raises:
        ValueError: ``log_model`` requested while the run is offline.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike = ".",
        id: str | None = None,  # noqa: A002 - wandb's own argument name
        project: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        offline: bool | None = None,
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        checkpoint_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            mode = resolve_wandb_mode()
        else:
            mode = "offline" if offline else "online"
        if mode == "offline" and log_model:
            raise ValueError(
                f"Expected `log_model=False` for an offline W&B run, but got log_model={log_model!r}"
                " (checkpoints cannot be uploaded offline; set WANDB_API_KEY or run `wandb login`)"
            )
        if kwargs.get("mode") is None:  # the CLI passes wandb.init's mode=None explicitly
            kwargs["mode"] = mode
        super().__init__(
            name=name,
            save_dir=save_dir,
            id=id,
            project=project,
            log_model=log_model,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            group=group,
            tags=tags,
            job_type=job_type,
            **kwargs,
        )
        self.mode: str = kwargs["mode"]
        if self._wandb_init.get("anonymous") is None:  # wandb warns about the unused setting
            self._wandb_init.pop("anonymous", None)

    @property
    def run_dir(self) -> str | None:
        """Local folder of the W&B run (``.../wandb/offline-run-*`` or ``run-*``), if started."""
        if self._experiment is None:
            return None
        return getattr(self._experiment.settings, "sync_dir", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._wandb_init["id"] = self._experiment.id
            self._id = self._experiment.id
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
