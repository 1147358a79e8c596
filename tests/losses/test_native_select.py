"""The native top-K kernel (losses/csrc/top_k_select.c): the selection of ``torch.topk`` on
``magnitude_key``, its build (cache, fallback, concurrency) and the losses on either path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from losses import TopKCrossEntropyLoss, build_loss, native
from losses.topk import magnitude_key, top_k_indices

ROOT = Path(__file__).resolve().parents[2]
needs_compiler = pytest.mark.skipif(
    shutil.which(native.compiler()[0]) is None, reason="no C compiler on this machine"
)


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty kernel cache and a reloaded kernel; the loaded kernel is reset afterwards."""
    cache = tmp_path / "native-cache"
    monkeypatch.setenv(native.ENV_CACHE, str(cache))
    monkeypatch.delenv(native.ENV_MODE, raising=False)
    native._library.cache_clear()
    yield cache
    native._library.cache_clear()


def reference_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """torch.topk's selection on the magnitude key, in increasing index order."""
    return magnitude_key(scores).topk(keep, dim=-1, sorted=False).indices.sort(-1).values


def select(scores: torch.Tensor, keep: int) -> torch.Tensor:
    indices = native.top_k_magnitude_indices(scores, keep)
    assert indices is not None, "the native kernel did not run"
    return indices


@needs_compiler
def test_the_kernel_builds_with_openmp_here() -> None:
    assert native.available()
    assert native.has_openmp()  # gcc: rows in parallel on torch's own thread pool


@needs_compiler
@pytest.mark.parametrize(
    ("shape", "keep"),
    [
        ((1, 1), 1),
        ((3, 2), 1),
        ((3, 7), 7),  # keep = n: every index
        ((5, 13), 4),  # n not a multiple of 4 (the histogram's unrolled tail)
        ((8, 50176), 5017),  # the poster's K = 10% of a 224 x 224 image
        ((8, 50176), 50175),
        ((2, 3, 999), 500),  # leading axes
        ((37, 301), 30),  # more rows than threads
        ((1, 401408), 40140),  # one whole-batch row
    ],
)
def test_selects_what_torch_topk_selects(shape, keep) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + keep)
    # distinct CE-like values over many octaves: the selection is unique
    n = shape[-1]
    values = torch.rand(*shape[:-1], n, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
        -6, 3, (*shape[:-1], n), generator=gen
    )
    scores = values.float()
    ours = select(scores, keep)
    assert ours.dtype == torch.int64 and ours.shape == (*shape[:-1], keep)
    assert bool((ours[..., 1:] > ours[..., :-1]).all())  # increasing, so no repeats
    if len(set(scores.flatten().tolist())) == scores.numel():
        assert torch.equal(ours, reference_indices(scores, keep))
    # the selected values are the top `keep` values in any case
    top = scores.topk(keep, dim=-1).values
    assert torch.equal(scores.gather(-1, ours).sort(-1, descending=True).values, top)


@needs_compiler
def test_keys_that_differ_only_in_their_last_bits() -> None:
    # 1.0 + i ulp: the same top 22 bits for i < 512, so pass 3 (bits 8..0) decides
    bits = torch.tensor(1.0).view(torch.int32) + torch.randperm(
        3000, generator=torch.Generator().manual_seed(0)
    ).to(torch.int32)
    scores = bits.view(torch.float32).reshape(1, -1)
    for keep in (1, 100, 511, 512, 513, 2999):
        assert torch.equal(select(scores, keep), reference_indices(scores, keep))


@needs_compiler
def test_special_values_rank_as_the_magnitude_key() -> None:
    nan = float("nan")
    row = torch.tensor(
        [1.0, -0.0, float("inf"), 0.0, nan, 1e-45, 3e38, -nan, 2.0, 1e-38], dtype=torch.float32
    )
    # NaN of either sign above +inf above 3e38 ... above 1e-45 above +-0.0
    order = [4, 7, 2, 6, 8, 0, 9, 5]
    for keep in range(1, len(order) + 1):
        assert select(row, keep).tolist() == sorted(order[:keep])
    # -0.0 and +0.0 are tied at the bottom: the lower index of the two is kept
    assert select(row, 9).tolist() == sorted([*order, 1])


@needs_compiler
def test_ties_at_the_threshold_keep_the_lowest_indices() -> None:
    row = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 2.0, 2.0, 0.5])
    assert select(row, 3).tolist() == [0, 2, 4]  # 5, 3 and the first of the four 2s
    assert select(row, 5).tolist() == [0, 2, 3, 4, 5]
    assert select(row, 6).tolist() == [0, 2, 3, 4, 5, 6]  # all four 2s: the branch-free pass
    same = torch.full((2, 1000), 0.25)
    assert torch.equal(select(same, 10), torch.arange(10).expand(2, 10))
    # the multiset of selected values is torch.topk's whatever the ties
    gen = torch.Generator().manual_seed(4)
    tied = torch.randint(0, 5, (4, 5000), generator=gen).float()
    for keep in (1, 999, 1000, 2500):
        ours = tied.gather(-1, select(tied, keep)).sort(-1).values
        assert torch.equal(ours, tied.topk(keep, dim=-1).values.sort(-1).values)


@needs_compiler
def test_the_same_selection_on_one_thread_and_on_several() -> None:
    gen = torch.Generator().manual_seed(5)
    scores = torch.rand(16, 4099, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = select(scores, 400)
        torch.set_num_threads(max(2, before))
        several = select(scores, 400)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, several)


def test_cases_outside_the_kernel_return_none() -> None:
    scores = torch.rand(2, 10)
    assert native.top_k_magnitude_indices(scores.double(), 3) is None
    assert native.top_k_magnitude_indices(scores.half(), 3) is None
    assert native.top_k_magnitude_indices(scores, 0) is None
    assert native.top_k_magnitude_indices(scores, 11) is None
    assert native.top_k_magnitude_indices(torch.tensor(1.0), 1) is None
    # and top_k_indices still answers, by torch.topk
    assert set(top_k_indices(scores.double()[0], 3, non_negative=True).tolist()) == set(
        scores[0].topk(3).indices.tolist()
    )


@needs_compiler
def test_a_non_contiguous_input_is_selected_by_its_values() -> None:
    scores = torch.rand(50, 8).t()  # (8, 50), rows not contiguous
    assert torch.equal(select(scores, 7), reference_indices(scores, 7))


CASES = {
    "ce_topk_dice": lambda: build_loss("ce_topk_dice"),
    "topk_dice": lambda: build_loss("topk_dice"),
    "topk_ce_dice": lambda: build_loss("topk_ce_dice"),
    "topk_ce_batch_pool": lambda: TopKCrossEntropyLoss(k=7, pool="batch"),
    "ce_topk_dice_3d": lambda: build_loss("ce_topk_dice"),
    # with ignored pixels both losses take the masked path: torch.topk on both sides
    "ce_topk_dice_ignore": lambda: build_loss("ce_topk_dice", ignore_index=255),
}


@needs_compiler
@pytest.mark.parametrize("name", list(CASES))
def test_losses_agree_on_the_native_and_the_torch_path(name) -> None:
    gen = torch.Generator().manual_seed(6)
    shape = (2, 4, 6, 10, 12) if name.endswith("3d") else (3, 4, 40, 44)
    logits = torch.randn(*shape, generator=gen) * 3
    target = torch.randint(0, 4, (shape[0], *shape[2:]), generator=gen)
    if name.endswith("ignore"):
        target[0, :5] = 255
    loss = CASES[name]()

    def value_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        x = logits.clone().requires_grad_(True)
        value = loss(x, target)
        value.backward()
        return value.detach(), x.grad

    calls = []
    real = native.top_k_magnitude_indices

    def counting(scores: torch.Tensor, keep: int) -> torch.Tensor | None:
        result = real(scores, keep)
        calls.append(result is not None)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "top_k_magnitude_indices", counting)
        fast = value_and_grad()
        assert calls == ([] if name.endswith("ignore") else [True])  # the kernel ranked them
        with native.disabled():
            plain = value_and_grad()
        assert calls[1:] == ([] if name.endswith("ignore") else [False])
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-5, atol=1e-9)


@needs_compiler
def test_build_writes_one_library_into_the_cache(fresh_native: Path) -> None:
    assert native.available()
    built = list(fresh_native.iterdir())
    assert len(built) == 1 and built[0].name.startswith("top_k_select-")
    assert built[0].suffix == ".so"
    assert built[0] == native.library_path(native.FLAGS + native.OPENMP_FLAGS)
    mtime = built[0].stat().st_mtime_ns
    native._library.cache_clear()
    assert native.available() and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_mode_0_never_builds(fresh_native: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_MODE, "0")
    assert not native.available() and not native.has_openmp()
    assert native.top_k_magnitude_indices(torch.rand(2, 10), 3) is None
    assert not fresh_native.exists()


def test_an_unknown_mode_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_MODE, "fast")
    native._library.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"LOSSES_NATIVE.*'fast'"):
            native.available()
    finally:
        native._library.cache_clear()


def _fake_compiler(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-cc"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_a_failing_compiler_warns_once_and_falls_back(
    fresh_native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", _fake_compiler(tmp_path, "echo 'fake-cc: no such thing' >&2; exit 3"))
    with pytest.warns(RuntimeWarning, match=r"could not be built.*fake-cc: no such thing"):
        assert not native.available()
    assert native.top_k_magnitude_indices(torch.rand(2, 10), 3) is None  # no second warning
    # the losses still run, on torch.topk
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert torch.isfinite(build_loss("ce_topk_dice")(logits, target))
    assert not any(p.suffix == ".tmp" for p in fresh_native.rglob("*"))  # nothing left behind


def test_a_missing_compiler_raises_in_mode_1(
    fresh_native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native.ENV_MODE, "1")
    with pytest.raises(native.NativeBuildError, match="no-such-cc"):
        native.available()


@needs_compiler
def test_a_compiler_without_openmp_builds_the_serial_kernel(
    fresh_native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.which(native.compiler()[0])
    script = f'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {real} "$@"\n'
    monkeypatch.setenv("CC", _fake_compiler(tmp_path, script))
    assert native.available() and not native.has_openmp()
    scores = torch.rand(6, 777, generator=torch.Generator().manual_seed(7))
    assert torch.equal(select(scores, 70), reference_indices(scores, 70))


@needs_compiler
def test_concurrent_builds_share_one_cache(fresh_native: Path) -> None:
    code = (
        "import torch; from losses import native; "
        "i = native.top_k_magnitude_indices(torch.arange(10.0).reshape(1, -1), 3); "
        "print(i.tolist())"
    )
    env = {**os.environ, native.ENV_CACHE: str(fresh_native), native.ENV_MODE: "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(out.strip() == "[[7, 8, 9]]" for out in outputs)
    files = sorted(p.name for p in fresh_native.iterdir())
    assert len(files) == 1 and files[0].endswith(".so")  # no temporary file left behind


@pytest.mark.parametrize("use_native", [True, False])
def test_topk_ce_keeps_no_full_size_ce_for_its_backward(use_native) -> None:
    # the selection's backward needs only the indices; a saved (B, N) CE would add to the peak
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if use_native:
            TopKCrossEntropyLoss(k=10)(logits, target)
        else:
            with native.disabled():
                TopKCrossEntropyLoss(k=10)(logits, target)
    assert (torch.float32, (2, 256)) not in saved
    assert (torch.int64, (2, 25)) in saved  # the selection's indices
