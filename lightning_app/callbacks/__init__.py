"""Callbacks of the application, one module each.

- :class:`BestAndLastCheckpoint` (``best_and_last``): the best checkpoint and ``last.ckpt`` at
  every epoch.
- :class:`ExactResume` (``exact_resume``): random states and the loader's position in the
  checkpoint, so that a resumed fit repeats the uninterrupted one.
- :class:`ProgressBar` (``progress_bar``): rich bars on a terminal, plain lines in log files.
- :class:`WandbPanels` (``wandb_panels``): per-class score table and image overlays in W&B.
- :class:`RunSummary` (``run_summary``): where the run's outputs are, printed at the end of fit.
- :class:`TestReport` (``test_report``): ``per_case.csv``, ``summary.md`` and masks of ``test``.

Without a W&B logger, :class:`WandbPanels` does nothing and :class:`RunSummary` prints what
exists (checkpoints, CSV logs, config). Configs name them as ``lightning_app.callbacks.<Class>``.
``CheckpointOnTerminate`` lives beside the resume logic, in :mod:`lightning_app.checkpoints`.
"""

from lightning_app.callbacks.best_and_last import BestAndLastCheckpoint
from lightning_app.callbacks.exact_resume import ExactResume
from lightning_app.callbacks.progress_bar import ProgressBar, stdout_is_terminal
from lightning_app.callbacks.run_summary import RunSummary
from lightning_app.callbacks.test_report import TestReport
from lightning_app.callbacks.wandb_panels import WandbPanels
from lightning_app.loggers import find_wandb_logger

__all__ = [
    "BestAndLastCheckpoint",
    "ExactResume",
    "ProgressBar",
    "RunSummary",
    "TestReport",
    "WandbPanels",
    "find_wandb_logger",
    "stdout_is_terminal",
]
