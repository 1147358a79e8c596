"""W&B logger that never prompts: online with credentials, offline without.

Mode (:func:`resolve_wandb_mode`): ``$WANDB_MODE`` when set (``disabled`` drops the W&B logger,
CSV only), else ``online`` with ``$WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host
(``wandb login``), else ``offline`` (``<save_dir>/wandb/offline-run-*``, upload later with
``wandb sync``).

W&B never stops a run (:class:`WandbLogger`): when the mode is online but the server cannot be
reached at start, the run continues offline and says how to ``wandb sync`` it later; any W&B
error in the middle of a run is reported once and W&B logging stops, while training and the
CSV logger go on. ``WANDB_MODE=offline`` skips the reachability check (clusters).
"""

from __future__ import annotations

import netrc
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "WandbLogger",
    "find_wandb_logger",
    "resolve_wandb_mode",
    "has_wandb_credentials",
    "wandb_server_reachable",
]

WandbMode = Literal["online", "offline", "disabled"]

#: seconds the reachability check waits for the W&B server
PROBE_TIMEOUT_S = 8.0
#: ``wandb.init``'s own timeout (``init_timeout``) for an online start (W&B's default is 90 s)
INIT_TIMEOUT_S = 15.0


def wandb_base_url() -> str:
    """The W&B server: ``$WANDB_BASE_URL``, default ``https://api.wandb.ai``."""
    return os.environ.get("WANDB_BASE_URL", "").strip() or "https://api.wandb.ai"


def wandb_server_reachable(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if an HTTP request to the W&B server gets any answer within ``timeout`` seconds.

    Any HTTP status counts as reachable (the request carries no credentials); a refused or
    timed-out connection, an unknown host or a proxy failure count as unreachable. Proxies from
    the environment (``HTTPS_PROXY``) are honoured.
    """
    request = urllib.request.Request(url or wandb_base_url(), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - http(s) only
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
    """The W&B mode for this process, first match wins:

    1. ``WANDB_MODE`` (``online``, ``offline``, ``disabled``; ``dryrun`` means offline).
    2. ``WANDB_API_KEY`` set -> ``online``.
    3. A ``~/.netrc`` (or ``$NETRC``) entry for the W&B host (``$WANDB_BASE_URL``, default
       ``api.wandb.ai``; ``wandb login`` writes it) -> ``online``.
    4. Otherwise ``offline``.

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


def find_wandb_logger(trainer: L.Trainer) -> _LightningWandbLogger | None:
    """The trainer's first W&B logger, or ``None`` (CSV-only runs)."""
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger):
            return logger
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with automatic online/offline mode and a clean finish.

    Differences from the parent:

    - ``offline=None`` (default) picks the mode with :func:`resolve_wandb_mode`, so a machine
      without W&B credentials runs offline instead of prompting for a key. ``True``/``False``
      force offline/online. The mode is passed to ``wandb.init(mode=...)``; unlike the parent,
      the process environment is not modified.
    - ``finalize`` finishes the W&B run (so several fits in one Python process each get their
      own run, or resume the same one when ``id`` is fixed), remembering its id.
    - W&B never stops the run. Online start: the server is probed first
      (:func:`wandb_server_reachable`, ``PROBE_TIMEOUT_S``) and ``wandb.init`` gets
      ``init_timeout=INIT_TIMEOUT_S`` unless ``settings`` sets one; if the server cannot be
      reached or ``wandb.init`` fails, the run starts offline instead and a warning gives the
      ``wandb sync`` command (``self.fallback_reason`` says why). Every later W&B call
      (metrics, hyperparameters, images, checkpoints, finish) that raises is reported once as
      a warning and W&B logging stops for the rest of the run (``self.failed``); training and
      the other loggers go on.

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
        self.fallback_reason: str | None = None
        self.failed: str | None = None
        if self._wandb_init.get("anonymous") is None:  # wandb warns about the unused setting
            self._wandb_init.pop("anonymous", None)

    # ------------------------------------------------------------------ start
    @property
    def experiment(self) -> Any:
        """The W&B run, started on first use (online, or offline when the server is away)."""
        if self._experiment is None and rank_zero_only.rank == 0:
            self._start()
        return _LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]

    def _start(self) -> None:
        start = _LightningWandbLogger.experiment.fget  # type: ignore[attr-defined]
        if self.mode != "online":
            start(self)
            return
        url = wandb_base_url()
        if not wandb_server_reachable(url):
            self._go_offline(f"the W&B server {url} cannot be reached")
            start(self)
            return
        import wandb

        settings = self._wandb_init.get("settings")
        if settings is None:
            self._wandb_init["settings"] = wandb.Settings(init_timeout=INIT_TIMEOUT_S)
        try:
            start(self)
        except Exception as err:  # noqa: BLE001 - any W&B failure: continue offline
            self._experiment = None
            try:
                wandb.finish(exit_code=1)
            except Exception:  # noqa: BLE001, S110 - nothing to clean up
                pass
            self._go_offline(f"wandb.init failed ({type(err).__name__}: {err})")
            start(self)

    def _go_offline(self, reason: str) -> None:
        self.fallback_reason = reason
        self.mode = "offline"
        self._wandb_init["mode"] = "offline"
        self._wandb_init.pop("settings", None)
        save_dir = self._wandb_init.get("dir") or "."
        rank_zero_warn(
            f"W&B: {reason}; this run continues OFFLINE in {os.path.abspath(save_dir)}/wandb/"
            "offline-run-*. Upload it later from a machine with internet: "
            "`wandb sync <that offline-run-* folder>`. On compute nodes without internet set "
            "WANDB_MODE=offline to skip this check."
        )

    # ------------------------------------------------------------------ never fail the run
    def _fail(self, what: str, err: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{what}: {type(err).__name__}: {err}"
            rank_zero_warn(
                f"W&B failed during {what} ({type(err).__name__}: {err}); W&B logging stops "
                "for the rest of this run, training goes on and the CSV logger keeps every "
                "metric."
            )

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        _guarded("log_hyperparams", super().log_hyperparams, self, args, kwargs)

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        _guarded("log_metrics", super().log_metrics, self, args, kwargs)

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        _guarded("log_table", super().log_table, self, args, kwargs)

    def log_text(self, *args: Any, **kwargs: Any) -> None:
        _guarded("log_text", super().log_text, self, args, kwargs)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        _guarded("log_image", super().log_image, self, args, kwargs)

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        _guarded("after_save_checkpoint", super().after_save_checkpoint, self, args, kwargs)

    def log_payload(self, payload: dict[str, Any]) -> None:
        """``experiment.log(payload)``, guarded like every other W&B call."""
        _guarded("log", lambda p: self.experiment.log(p), self, (payload,), {})

    @property
    def run_dir(self) -> str | None:
        """Local folder of the W&B run (``.../wandb/offline-run-*`` or ``run-*``), if started."""
        if self._experiment is None:
            return None
        return getattr(self._experiment.settings, "sync_dir", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            if self.failed is None:
                super().finalize(status)
            if self._experiment is not None and hasattr(self._experiment, "finish"):
                self._wandb_init["id"] = self._experiment.id
                self._id = self._experiment.id
                self._experiment.finish(exit_code=0 if status == "success" else 1)
        except Exception as err:  # noqa: BLE001 - the run's own outputs are already safe
            self._fail("finish", err)
        finally:
            self._experiment = None


def _guarded(
    what: str, call: Callable[..., Any], logger: WandbLogger, args: tuple, kwargs: dict
) -> None:
    """Run a W&B call unless W&B already failed in this run; report the first failure."""
    if logger.failed is not None:
        return
    try:
        call(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - W&B must never stop the run
        logger._fail(what, err)
