"""The slice loader: uint8 labels between processes, batches equal to ``default_collate``; the
training order and augmentation of an epoch follow from (seed, epoch) alone."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from datamodules import PhantomDataModule
from datamodules.loader import EpochShuffleSampler, SliceLoader, collate_slices
from tests.datamodules.test_phantom import SMALL


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> PhantomDataModule:
    dm = PhantomDataModule(data_dir=str(tmp_path_factory.mktemp("loader")), **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def assert_batches_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype, key
            torch.testing.assert_close(got[key], value, rtol=0, atol=0)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_equal_default_collate_of_the_items(phantom, num_workers) -> None:
    phantom.num_workers = num_workers
    try:
        loader = phantom.val_dataloader()
        assert isinstance(loader, SliceLoader) and loader.collate_fn is collate_slices
        ds = loader.dataset
        batches = list(loader)
        assert sum(len(b["case"]) for b in batches) == len(ds)
        for i, batch in enumerate(batches):
            items = [ds[j] for j in range(i * 4, min(len(ds), i * 4 + 4))]
            expected = default_collate(items)
            assert expected["label"].dtype == torch.int64
            assert_batches_equal(batch, expected)
        assert int(torch.cat([b["label"] for b in batches]).max()) == 5  # every class came
    finally:
        phantom.num_workers = 0


def test_worker_ships_uint8_labels_in_shared_memory(phantom) -> None:
    ds = phantom.val_dataloader().dataset
    # a plain DataLoader shows what crosses the process boundary
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_slices)))
    assert batch["label"].dtype == torch.uint8 and batch["label"].is_shared()
    assert batch["image"].is_shared()
    expected = default_collate([ds[j] for j in range(4)])
    torch.testing.assert_close(batch["label"].long(), expected["label"], rtol=0, atol=0)


def test_narrowing_is_lossless_over_the_uint8_range() -> None:
    labels = [torch.arange(256, dtype=torch.int64).reshape(16, 16).roll(i) for i in range(3)]
    items = [
        {"image": torch.zeros(1, 16, 16), "label": lab, "case": "c", "slice": 0} for lab in labels
    ]
    batch = collate_slices(items)
    assert batch["label"].dtype == torch.uint8
    wide = next(iter(SliceLoader(items, batch_size=3)))
    assert_batches_equal(wide, default_collate(items))
    assert int(wide["label"].max()) == 255


def test_lightning_reinstantiates_it_with_a_distributed_sampler(phantom) -> None:
    """What Lightning does to every loader under DDP: re-create it with its own sampler."""
    with _replace_dunder_methods(DataLoader, "dataset"):
        loader = phantom.train_dataloader()
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False)
    ddp = _update_dataloader(loader, sampler, mode=None)
    assert type(ddp) is SliceLoader and ddp.collate_fn is collate_slices
    assert ddp.sampler is sampler and ddp.batch_size == 4
    batches = list(ddp)
    assert sum(len(b["case"]) for b in batches) == len(loader.dataset) // 2
    assert all(b["label"].dtype == torch.int64 for b in batches)
    ds = loader.dataset  # augmented: compare which slices came, in the sampler's order
    order = list(sampler)
    assert batches[0]["slice"].tolist() == [int(ds.slice_index[i]) for i in order[:4]]
    assert batches[0]["case"] == [ds.cases[ds.case_index[i]] for i in order[:4]]


def test_epoch_shuffle_is_a_function_of_seed_and_epoch() -> None:
    sampler = EpochShuffleSampler(range(50), seed=7)
    before = torch.get_rng_state()
    orders = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.setdefault(epoch, []).append(list(sampler))
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is not drawn from
    assert orders[0][0] == orders[0][1] and sorted(orders[0][0]) == list(range(50))
    assert orders[1][0] != orders[0][0] and sorted(orders[1][0]) == list(range(50))
    other = EpochShuffleSampler(range(50), seed=8)
    assert list(other) != orders[0][0]


def _train_loader(phantom, num_workers: int):
    """A new training loader of ``phantom`` with ``num_workers`` workers (a fresh process
    state); the fixture keeps its own setting."""
    phantom.num_workers = num_workers
    try:
        return phantom.train_dataloader()
    finally:
        phantom.num_workers = 0


def _augmented_epoch(phantom, epoch: int, num_workers: int) -> torch.Tensor:
    """The training images of ``epoch`` from a new training loader (a fresh process state)."""
    loader = _train_loader(phantom, num_workers)
    loader.sampler.set_epoch(epoch)  # what Lightning does before each training epoch
    return torch.cat([b["image"] for b in loader])


def test_an_epoch_is_the_same_after_a_restart_and_with_any_worker(phantom, monkeypatch) -> None:
    """Epoch 1 of one loader (its persistent worker has loaded epoch 0 first) equals epoch 1 of
    a new loader, and a loader without workers: the order comes from (seed, epoch), the
    augmentation is reseeded from (seed, rank, epoch, worker) at each epoch."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    loader = _train_loader(phantom, num_workers=1)
    assert isinstance(loader.sampler, EpochShuffleSampler) and loader.persistent_workers
    assert _is_dataloader_shuffled(loader)  # so Lightning shuffles under DDP
    straight = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        straight.append(torch.cat([b["image"] for b in loader]))
    assert not torch.equal(straight[0], straight[1])
    assert torch.equal(_augmented_epoch(phantom, 1, num_workers=1), straight[1])
    assert torch.equal(_augmented_epoch(phantom, 1, num_workers=0), straight[1])
    monkeypatch.setenv("PL_GLOBAL_SEED", "43")
    assert not torch.equal(_augmented_epoch(phantom, 1, num_workers=0), straight[1])


def test_a_loader_resumed_inside_an_epoch_hands_out_the_rest_of_it(phantom, monkeypatch) -> None:
    """After 2 batches of epoch 1 the loader's state holds (1, 2); a new loader given it hands
    out the epoch's other batches, augmented as in the uninterrupted pass (the skipped batches
    are loaded and dropped, so the worker's draws stay in step); a state of another epoch is
    ignored."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    loader = _train_loader(phantom, num_workers=1)
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    seen = [next(batches)["image"], next(batches)["image"]]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    rest = [b["image"] for b in batches]
    assert len(seen) + len(rest) == len(loader) > 2

    for workers in (1, 0):
        resumed = _train_loader(phantom, workers)
        resumed.load_state_dict(state)
        resumed.sampler.set_epoch(1)
        got = [b["image"] for b in resumed]
        assert len(got) == len(rest)
        assert all(torch.equal(a, b) for a, b in zip(got, rest, strict=True))
        assert resumed.state_dict() == {"epoch": 1, "batches": len(loader)}
        assert len(list(resumed)) == len(loader)  # the next pass is whole again

    resumed = phantom.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    resumed.sampler.set_epoch(1)
    assert len(list(resumed)) == len(loader)
