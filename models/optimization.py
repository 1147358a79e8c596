"""Optimizer and learning-rate schedule of :class:`models.SegmentationModel`.

Defaults are TransUNet's recipe: ``SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)`` and the poly
decay ``lr_t = lr_0 (1 - t / T)^0.9``, stepped once per optimizer step over the whole fit
(``T = trainer.estimated_stepping_batches``). Either part is replaced by a factory given in the
config (``model.optimizer`` / ``model.scheduler`` with ``class_path`` and ``init_args``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

__all__ = [
    "OptimizerFactory",
    "SchedulerFactory",
    "TRANSUNET_POLY_POWER",
    "TRANSUNET_SGD",
    "configure_optimization",
]

#: ``optimizer(params) -> Optimizer`` (Lightning CLI: ``class_path`` + ``init_args``).
OptimizerFactory = Callable[[Iterable], Optimizer]
#: ``scheduler(optimizer, total_steps) -> LRScheduler``, stepped once per optimizer step;
#: ``total_steps`` is ``trainer.estimated_stepping_batches`` (the whole fit). Fits any scheduler
#: whose second positional parameter is the schedule length (``PolynomialLR.total_iters``,
#: ``CosineAnnealingLR.T_max``).
SchedulerFactory = Callable[[Optimizer, int], LRScheduler]

# TransUNet's recipe (Chen et al., "TransUNet", arXiv:2102.04306, and its public trainer.py):
# SGD lr 0.01, momentum 0.9, weight decay 1e-4, lr_t = lr_0 * (1 - t / T) ** 0.9 per iteration.
TRANSUNET_SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
TRANSUNET_POLY_POWER = 0.9


def configure_optimization(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: OptimizerFactory | None,
    scheduler: SchedulerFactory | None,
    total_steps: float | int | None,
) -> dict:
    """Lightning's ``configure_optimizers`` answer: the optimizer and a per-step scheduler.

    Args:
        parameters: what the optimizer updates.
        optimizer: ``optimizer(params) -> Optimizer``; ``None``: :data:`TRANSUNET_SGD`.
        scheduler: ``scheduler(optimizer, total_steps) -> LRScheduler``; ``None``: the poly
            decay with power :data:`TRANSUNET_POLY_POWER`.
        total_steps: the fit's optimizer steps (``trainer.estimated_stepping_batches``:
            max_epochs x batches per epoch / accumulation, or max_steps).

    Raises:
        ValueError: if the fit has no finite length (``max_epochs=-1`` and ``max_steps=-1``).
    """
    if optimizer is None:
        opt = torch.optim.SGD(parameters, **TRANSUNET_SGD)
    else:
        opt = optimizer(parameters)
    if total_steps is None or total_steps == float("inf"):
        raise ValueError(
            "The scheduler needs a finite fit length: set `trainer.max_epochs` or "
            f"`trainer.max_steps` (got estimated_stepping_batches={total_steps})"
        )
    total = max(int(total_steps), 1)
    if scheduler is None:
        sched = PolynomialLR(opt, total_iters=total, power=TRANSUNET_POLY_POWER)
    else:
        sched = scheduler(opt, total)
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1},
    }
