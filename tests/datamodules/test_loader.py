"""The slice loader: uint8 labels between processes, batches equal to ``default_collate``."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from datamodules import PhantomDataModule
from datamodules.loader import SliceLoader, collate_slices
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
