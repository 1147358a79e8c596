"""Per-case test evaluation that is exact under DDP.

:class:`CaseEvaluator` is fed one whole test case at a time (``update``), computes its metrics
at once with :func:`models.metrics.compute_case_metrics` (so the work is spread over the
processes), and at the end of the test epoch (``compute``) gathers every process's cases,
keeps one row per case ``index`` and sorts by it. ``DistributedSampler`` pads the last round
with repeated cases so that every process gets as many; keyed by the dataset index, those
repeats are dropped, and the table is the same as with one process, whatever the number of
cases and processes. Every process receives the full table (``all_gather_object``), so all of
them compute the same summary; only rank 0 writes files.

:class:`TestResults` holds the sorted per-case table and its reduction
(:func:`models.metrics.aggregate_case_metrics`: mean over cases per class, then over the
foreground classes) plus the empty-mask counts (:func:`models.metrics.count_empty_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from models.metrics import (
    METRIC_NAMES,
    PROTOCOLS,
    aggregate_case_metrics,
    compute_case_metrics,
    count_empty_masks,
    empty_mask_flags,
)

__all__ = ["CaseEvaluator", "CaseResult", "TestResults", "merge_case_results"]


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one test case.

    Attributes:
        index: the case's position in the test split (the dataloader's ``index``).
        case: the case's name (``case0001``, ``patient001_frame01``).
        metrics: ``{name: float64 (K - 1,)}`` for ``name`` in ``METRIC_NAMES``; entry ``i`` is
            foreground class ``i + 1``.
        gt_empty, pred_empty: bool ``(K - 1,)``, the class has no voxel in the ground truth /
            the prediction.
    """

    index: int
    case: str
    metrics: dict[str, np.ndarray]
    gt_empty: np.ndarray
    pred_empty: np.ndarray


def merge_case_results(parts: Sequence[Sequence[CaseResult]]) -> list[CaseResult]:
    """Union of per-process case lists: one result per ``index``, sorted by ``index``.

    A case seen by several processes (sampler padding) must carry the same name each time;
    the first occurrence is kept (the metrics of a repeat are computed from the same data).

    Raises:
        ValueError: one index with two different case names (the processes did not see the
            same test split).
    """
    by_index: dict[int, CaseResult] = {}
    for part in parts:
        for result in part:
            seen = by_index.get(result.index)
            if seen is None:
                by_index[result.index] = result
            elif seen.case != result.case:
                raise ValueError(
                    f"Test case index {result.index} is {seen.case!r} on one process and "
                    f"{result.case!r} on another; every process must read the same test split"
                )
    return [by_index[i] for i in sorted(by_index)]


@dataclass
class TestResults:
    """The deduplicated per-case table and its summary (see the module docstring).

    Attributes:
        class_names: foreground class names, label order (class ``i + 1`` at entry ``i``).
        protocol: the empty-mask protocol of ``models.metrics`` used for every case.
        cases: one :class:`CaseResult` per test case, sorted by ``index``.
        per_class: ``{metric: float64 (K - 1,)}``, nanmean over cases.
        mean: ``{metric: float}``, nanmean of ``per_class`` over the foreground classes.
        empty_counts: ``{kind: int64 (K - 1,)}`` from ``count_empty_masks`` (``both_empty``,
            ``gt_empty_only``, ``pred_empty_only``, ``hd95_excluded``).
    """

    __test__ = False  # not a pytest test class despite its name

    class_names: list[str]
    protocol: str
    cases: list[CaseResult]
    per_class: dict[str, np.ndarray] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    empty_counts: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_cases(
        cls, cases: Sequence[CaseResult], class_names: Sequence[str], protocol: str
    ) -> TestResults:
        """Reduce a sorted, deduplicated case list (see :func:`merge_case_results`).

        Raises:
            ValueError: no cases, or a case whose number of classes differs from
                ``len(class_names)``.
        """
        if not cases:
            raise ValueError("Expected at least one test case, but got none")
        names = [str(n) for n in class_names]
        for c in cases:
            if len(c.gt_empty) != len(names):
                raise ValueError(
                    f"Case {c.case!r} has {len(c.gt_empty)} foreground classes, expected "
                    f"{len(names)} ({names})"
                )
        per_class, mean = aggregate_case_metrics([c.metrics for c in cases])
        counts = count_empty_masks(
            [{"gt_empty": c.gt_empty, "pred_empty": c.pred_empty} for c in cases]
        )
        return cls(names, protocol, list(cases), per_class, mean, counts)

    def per_case_rows(self) -> list[dict[str, Any]]:
        """One row per case and foreground class, in case-index then label order:
        ``{"index", "case", "class", "label", <metrics...>, "gt_empty", "pred_empty"}``
        (metrics as floats, NaN where undefined)."""
        rows = []
        for c in self.cases:
            for i, name in enumerate(self.class_names):
                row: dict[str, Any] = {
                    "index": c.index,
                    "case": c.case,
                    "class": name,
                    "label": i + 1,
                }
                for metric in METRIC_NAMES:
                    row[metric] = float(c.metrics[metric][i])
                row["gt_empty"] = bool(c.gt_empty[i])
                row["pred_empty"] = bool(c.pred_empty[i])
                rows.append(row)
        return rows

    def scalars(self, class_keys: Sequence[str], prefix: str = "test") -> dict[str, float]:
        """``{"<prefix>/<metric>/<class key>": per-class value, "<prefix>/<metric>/mean": mean}``
        for every metric; ``class_keys`` are the foreground classes' metric keys."""
        if len(class_keys) != len(self.class_names):
            raise ValueError(
                f"Expected {len(self.class_names)} class keys (foreground classes), but got "
                f"{len(class_keys)}"
            )
        out: dict[str, float] = {}
        for metric in METRIC_NAMES:
            for key, value in zip(class_keys, self.per_class[metric], strict=True):
                out[f"{prefix}/{metric}/{key}"] = float(value)
            out[f"{prefix}/{metric}/mean"] = float(self.mean[metric])
        return out


class CaseEvaluator:
    """Collects per-case metrics on each process; :meth:`compute` gathers and deduplicates.

    Args:
        num_classes: classes ``K`` including background.
        class_names: ``K`` names, background first.
        protocol: ``"default"`` or ``"transunet"`` (empty-mask and HD95 conventions, see
            ``models.metrics``).

    Raises:
        ValueError: unknown ``protocol``, ``num_classes < 2`` or a ``class_names`` length other
            than ``num_classes``.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        protocol: Literal["default", "transunet"] = "default",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"Expected argument `protocol` to be one of {PROTOCOLS}, but got {protocol!r}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Expected argument `num_classes` to be an int >= 2, but got {num_classes!r}"
            )
        if len(class_names) != num_classes:
            raise ValueError(
                f"Expected argument `class_names` to have num_classes={num_classes} entries "
                f"(background first), but got {len(class_names)}"
            )
        self.num_classes = num_classes
        self.class_names = [str(n) for n in class_names]
        self.protocol = protocol
        self.local: list[CaseResult] = []

    def reset(self) -> None:
        """Forget this process's cases (call at the start of each test epoch)."""
        self.local = []

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        spacing: torch.Tensor | np.ndarray | Sequence[float] | None,
        case: str,
        index: int,
    ) -> CaseResult:
        """Evaluate one case and keep its result.

        Args:
            pred, target: integer label volumes ``(D, H, W)`` (or images ``(H, W)``).
            spacing: voxel size in mm in the arrays' axis order, or None (voxel units).
            case: the case's name. index: its index in the test split.

        Returns:
            The :class:`CaseResult` (also appended to this process's list).
        """
        p, t = _numpy(pred), _numpy(target)
        sp = None if spacing is None else _numpy(spacing).astype(np.float64)
        metrics = compute_case_metrics(p, t, self.num_classes, sp, self.protocol)
        flags = empty_mask_flags(p, t, self.num_classes)
        result = CaseResult(int(index), str(case), metrics, flags["gt_empty"], flags["pred_empty"])
        self.local.append(result)
        return result

    def gather(self) -> list[CaseResult]:
        """Every process's cases, deduplicated by index and sorted (collective under
        ``torch.distributed``: every process must call it)."""
        parts: list[Any] = [self.local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.local)
        return merge_case_results(parts)

    def compute(self) -> TestResults:
        """Gather (see :meth:`gather`) and reduce into :class:`TestResults`."""
        return TestResults.from_cases(self.gather(), self.class_names[1:], self.protocol)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
