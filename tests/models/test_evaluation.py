"""Per-case test evaluation: hand-computed rows, DDP-style deduplication, empty-mask counts."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from models.evaluation import CaseEvaluator, CaseResult, TestResults, merge_case_results

NAMES = ["background", "organ a", "organ b"]


def _cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    """``n`` random little cases (pred, target, spacing, name)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target = rng.integers(0, 3, size=(3, 6, 6))
        pred = np.where(rng.random((3, 6, 6)) < 0.7, target, rng.integers(0, 3, size=(3, 6, 6)))
        out.append((pred, target, np.array([2.0, 1.0, 0.5]), f"case{i:02d}"))
    return out


def test_rows_match_hand_computation() -> None:
    target = np.zeros((1, 4, 4), dtype=np.int64)
    target[0, :2, :2] = 1  # 4 voxels of class 1, class 2 absent
    pred = np.zeros_like(target)
    pred[0, :2, :1] = 1  # 2 voxels of class 1, both correct
    pred[0, 3, 3] = 2  # a false positive of class 2
    ev = CaseEvaluator(3, NAMES)
    ev.update(torch.from_numpy(pred), torch.from_numpy(target), torch.ones(3), "c0", 0)
    res = ev.compute()
    rows = res.per_case_rows()
    assert [(r["case"], r["class"], r["label"]) for r in rows] == [
        ("c0", "organ a", 1),
        ("c0", "organ b", 2),
    ]
    a, b = rows
    # class 1: TP 2, |P| 2, |G| 4
    assert a["dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert a["iou"] == pytest.approx(2 / 4)
    assert a["precision"] == pytest.approx(1.0) and a["recall"] == pytest.approx(0.5)
    assert not a["gt_empty"] and not a["pred_empty"]
    # class 2 under "default": GT empty, prediction not -> dice 0, recall NaN, HD95 NaN
    assert b["dice"] == 0.0 and math.isnan(b["recall"]) and math.isnan(b["hd95"])
    assert b["gt_empty"] and not b["pred_empty"]
    assert res.empty_counts["gt_empty_only"].tolist() == [0, 1]
    assert res.empty_counts["hd95_excluded"].tolist() == [0, 1]


def test_transunet_protocol_scores_a_false_positive_as_one() -> None:
    target = np.zeros((2, 4, 4), dtype=np.int64)
    pred = target.copy()
    pred[0, 0, 0] = 1  # class 1 predicted, absent from GT; class 2 absent from both
    res_t = CaseEvaluator(3, NAMES, protocol="transunet")
    res_t.update(pred, target, None, "c", 0)
    t = res_t.compute()
    assert t.per_class["dice"].tolist() == [1.0, 0.0] and t.per_class["hd95"].tolist() == [0, 0]
    res_d = CaseEvaluator(3, NAMES)
    res_d.update(pred, target, None, "c", 0)
    d = res_d.compute()
    assert d.per_class["dice"][0] == 0.0 and math.isnan(d.per_class["dice"][1])
    assert d.empty_counts["both_empty"].tolist() == [0, 1]


@pytest.mark.parametrize(("n_cases", "world"), [(3, 2), (5, 2), (4, 3), (1, 2), (2, 4)])
def test_merge_equals_one_process_under_distributed_sampler_padding(
    n_cases: int, world: int
) -> None:
    cases = _cases(n_cases)
    single = CaseEvaluator(3, NAMES)
    for i, (p, t, s, name) in enumerate(cases):
        single.update(p, t, s, name, i)
    reference = single.compute()
    # what each rank sees: torch's DistributedSampler (pads with repeated indices)
    parts = []
    for rank in range(world):
        sampler = DistributedSampler(range(n_cases), num_replicas=world, rank=rank, shuffle=False)
        ev = CaseEvaluator(3, NAMES)
        for i in sampler:
            p, t, s, name = cases[i]
            ev.update(p, t, s, name, i)
        parts.append(ev.local)
    assert sum(len(p) for p in parts) >= n_cases  # padded when n_cases % world != 0
    merged = TestResults.from_cases(merge_case_results(parts), NAMES[1:], "default")
    assert [c.index for c in merged.cases] == list(range(n_cases))
    # exactly equal (repr: NaN == NaN)
    assert repr(merged.per_case_rows()) == repr(reference.per_case_rows())
    for m in reference.per_class:
        np.testing.assert_array_equal(merged.per_class[m], reference.per_class[m])
    for k in reference.empty_counts:
        np.testing.assert_array_equal(merged.empty_counts[k], reference.empty_counts[k])


def test_merge_rejects_one_index_with_two_names() -> None:
    flags = np.zeros(2, dtype=bool)
    metrics = {"dice": np.zeros(2)}
    a = CaseResult(0, "case_a", metrics, flags, flags)
    b = CaseResult(0, "case_b", metrics, flags, flags)
    with pytest.raises(ValueError, match="index 0 is 'case_a' on one process and 'case_b'"):
        merge_case_results([[a], [b]])


def test_scalars_keys_and_means() -> None:
    ev = CaseEvaluator(3, NAMES)
    for i, (p, t, s, name) in enumerate(_cases(2)):
        ev.update(p, t, s, name, i)
    res = ev.compute()
    scalars = res.scalars(["organ_a", "organ_b"])
    assert set(scalars) == {
        f"test/{m}/{k}"
        for m in ("dice", "iou", "hd95", "precision", "recall")
        for k in ("organ_a", "organ_b", "mean")
    }
    assert scalars["test/dice/mean"] == pytest.approx(
        (scalars["test/dice/organ_a"] + scalars["test/dice/organ_b"]) / 2
    )
    with pytest.raises(ValueError, match="Expected 2 class keys"):
        res.scalars(["only_one"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"protocol": "nnunet"}, "protocol"),
        ({"num_classes": 1, "class_names": ["bg"]}, "num_classes"),
        ({"class_names": ["bg", "a"]}, "class_names"),
    ],
)
def test_bad_evaluator_arguments(kwargs: dict, match: str) -> None:
    args = {"num_classes": 3, "class_names": NAMES, **kwargs}
    with pytest.raises(ValueError, match=match):
        CaseEvaluator(**args)


def test_no_cases_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one test case"):
        CaseEvaluator(3, NAMES).compute()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cases = _cases(3)
        ev = CaseEvaluator(3, NAMES)
        sampler = DistributedSampler(range(3), num_replicas=world, rank=rank, shuffle=False)
        for i in sampler:
            p, t, s, name = cases[i]
            ev.update(p, t, s, name, i)
        res = ev.compute()
        queue.put((rank, [r["case"] for r in res.per_case_rows()], res.per_class["dice"]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_over_two_gloo_processes() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    single = CaseEvaluator(3, NAMES)
    for i, (p, t, s, name) in enumerate(_cases(3)):
        single.update(p, t, s, name, i)
    ref = single.compute()
    for _, case_names, dice in got:  # every rank holds the full, deduplicated table
        assert case_names == [r["case"] for r in ref.per_case_rows()]
        np.testing.assert_array_equal(dice, ref.per_class["dice"])
