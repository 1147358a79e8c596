"""Test report callback: ``per_case.csv``, ``summary.md``, W&B tables and predicted masks.

The formats are those of :mod:`lightning_app.reports`; the numbers are ``pl_module.test_results``
(:class:`models.evaluation.TestResults`). The CLI always adds this callback (``--report.*``).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.atomic import atomic_write_text
from lightning_app.loggers import find_wandb_logger
from lightning_app.reports import (
    PER_CASE_COLUMNS,
    poster_table,
    summary_markdown,
    write_per_case_csv,
    write_prediction,
)
from models.evaluation import TestResults
from models.metrics import METRIC_NAMES

__all__ = ["TestReport"]


class TestReport(Callback):
    """Writes the test report of a ``test`` run (files: :mod:`lightning_app.reports`).

    Reads ``pl_module.test_results`` (a :class:`models.evaluation.TestResults`, complete on
    every rank once the test epoch has ended) in ``on_test_end``; rank 0 writes
    ``per_case.csv`` and ``summary.md`` into the run directory, logs the W&B tables
    ``test/per_case`` (one row per case and class) and ``test/summary`` (per-class and mean
    values) when a W&B logger is attached, and prints the poster table and the paths at the
    end of the run.

    Args:
        save_predictions: also write each test case's predicted mask (the ``pred`` that
            ``test_step`` returns) to ``<run dir>/<predictions_dir>/<case>.nii.gz``, in the raw
            case's geometry where the test batches carry it (see :func:`write_prediction`).
        predictions_dir: folder name under the run directory for the masks.
        label: first cell of the poster table's row (the CLI sets the loss preset's name);
            default: the model's loss class name.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        save_predictions: bool = False,
        predictions_dir: str = "predictions",
        label: str | None = None,
    ) -> None:
        if not predictions_dir or os.path.isabs(predictions_dir):
            raise ValueError(
                "Expected argument `predictions_dir` to be a folder name relative to the run "
                f"directory, but got {predictions_dir!r}"
            )
        self.save_predictions = bool(save_predictions)
        self.predictions_dir = predictions_dir
        self.label = label
        self.paths: dict[str, Path] = {}
        self._lines: list[str] = []

    def run_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.save_predictions or not isinstance(outputs, dict) or "pred" not in outputs:
            return
        case = batch["case"][0] if isinstance(batch.get("case"), (list, tuple)) else None
        if case is None:
            case = f"case{int(batch['index'][0]):04d}"
        pred = outputs["pred"]
        if isinstance(pred, torch.Tensor):
            pred = pred.detach().cpu().numpy()
        out = self.run_dir(trainer) / self.predictions_dir / f"{case}.nii.gz"
        write_prediction(pred, batch, out)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results = getattr(pl_module, "test_results", None)
        if not isinstance(results, TestResults):
            warnings.warn(
                f"{type(pl_module).__name__} has no `test_results`; no test report written.",
                stacklevel=2,
            )
            return
        dataset = str(getattr(trainer.datamodule, "dataset_name", "") or "data")
        label = self.label or type(getattr(pl_module, "loss", pl_module)).__name__
        run_dir = self.run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = write_per_case_csv(results, run_dir / "per_case.csv")
        md_path = run_dir / "summary.md"
        atomic_write_text(md_path, summary_markdown(results, dataset, label))
        self.paths = {"per_case": csv_path.resolve(), "summary": md_path.resolve()}
        self._log_wandb(trainer, results, dataset, label)
        self._lines = [
            "",
            poster_table(results, dataset, label),
            "",
            f"Test report ({len(results.cases)} cases, protocol {results.protocol}):",
            f"run directory : {run_dir.resolve()}",
            f"per-case CSV  : {self.paths['per_case']}",
            f"summary       : {self.paths['summary']}",
        ]
        if self.save_predictions:
            self._lines.append(f"predictions   : {(run_dir / self.predictions_dir).resolve()}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # printed after Lightning's own results table, so the paths are the last lines
        if stage == "test" and trainer.is_global_zero and self._lines:
            print("\n".join(self._lines), flush=True)
        self._lines = []

    @staticmethod
    def _log_wandb(trainer: L.Trainer, results: TestResults, dataset: str, label: str) -> None:
        logger = find_wandb_logger(trainer)
        if logger is None:
            return
        import wandb

        def cell(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        rows = results.per_case_rows()
        per_case = wandb.Table(
            columns=list(PER_CASE_COLUMNS),
            data=[[cell(r[c]) for c in PER_CASE_COLUMNS] for r in rows],
        )
        summary_cols = ["dataset", "label", "protocol", "class", *METRIC_NAMES]
        summary_rows = [
            [dataset, label, results.protocol, name]
            + [cell(float(results.per_class[m][i])) for m in METRIC_NAMES]
            for i, name in enumerate(results.class_names)
        ]
        summary_rows.append(
            [dataset, label, results.protocol, "mean"]
            + [cell(results.mean[m]) for m in METRIC_NAMES]
        )
        logger.experiment.log(
            {
                "test/per_case": per_case,
                "test/summary": wandb.Table(columns=summary_cols, data=summary_rows),
            }
        )
