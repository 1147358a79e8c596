"""W&B ``val/examples``: fixed validation slices that cover every class, the smallest included,
chosen once and logged at every validation with their ground truth and hard-pixel layer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_app.callbacks.wandb_panels import WandbPanels, choose_slices, class_pixel_counts
from lightning_app.cli import SegmentationCLI
from tests.lightning_app.wandb_records import history_and_summary


def test_class_pixel_counts_by_hand() -> None:
    target = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [2, 0]]])  # 255: an ignored pixel
    counts = class_pixel_counts(target, num_classes=3)
    assert counts.tolist() == [[1, 2, 0], [1, 0, 3]]


def test_choose_slices_covers_the_rarest_classes_first() -> None:
    # class 3 is rarest; its best slice "c" also holds class 2, so class 2 needs no slice of
    # its own until places are free; class 1 is not in "c" and gets its best slice "a"
    totals = [1000, 500, 60, 5]
    best = {0: "z", 1: "a", 2: "b", 3: "c"}
    counts = {"z": [900, 0, 0, 0], "a": [400, 300, 0, 0], "b": [500, 0, 40, 0], "c": [600, 0, 9, 5]}
    assert choose_slices(totals, best, counts, 1) == ["c"]
    assert choose_slices(totals, best, counts, 2) == ["c", "a"]
    assert choose_slices(totals, best, counts, 4) == ["c", "a", "b"]  # never the empty "z"
    # a class without pixels is skipped; with no foreground at all, background's best slice
    assert choose_slices([10, 0, 3], {0: "z", 2: "b"}, {"z": [10, 0, 0], "b": [7, 0, 3]}, 4) == [
        "b"
    ]
    assert choose_slices([10, 0], {0: "z"}, {"z": [10, 0]}, 4) == ["z"]
    assert choose_slices([0, 0], {}, {}, 4) == []
    # ties: the class with the lower index first
    assert choose_slices([9, 5, 5], {1: "a", 2: "b"}, {"a": [1, 5, 0], "b": [1, 0, 5]}, 1) == ["a"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`num_images` to be >= 0, but got -1"):
        WandbPanels(num_images=-1)
    with pytest.raises(ValueError, match=r"`every_n_epochs` to be >= 1, but got 0"):
        WandbPanels(every_n_epochs=0)


def test_examples_show_fixed_slices_covering_every_class(
    tiny_cli_args: Callable[..., list[str]], tiny_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning_app"])  # the CLI warns about pytest's argv
    cli = SegmentationCLI(
        args=["fit", *tiny_cli_args(trainer__max_epochs=2, trainer__limit_train_batches=1)]
    )
    (panels,) = [c for c in cli.trainer.callbacks if isinstance(c, WandbPanels)]
    chosen = panels.chosen
    assert chosen is not None and 1 <= len(chosen) <= panels.num_images

    # the validation slices as the model sees them, read through the dataset (not the callback)
    val_set = cli.datamodule.val_set
    labels = {(item["case"], item["slice"]): item["label"].numpy() for item in val_set}
    num_classes = cli.model.num_classes
    totals = sum(np.bincount(lab.ravel(), minlength=num_classes) for lab in labels.values())
    in_val = {c for c in range(num_classes) if totals[c] > 0}
    assert in_val == set(range(num_classes))  # the tiny phantom's validation holds every class
    shown = set().union(*(np.unique(labels[key]).tolist() for key in chosen))
    assert shown == in_val
    # the rarest class is shown at the slice where it has the most pixels
    rarest = min(range(1, num_classes), key=lambda c: (totals[c], c))
    top = max(labels, key=lambda key: (labels[key] == rarest).sum())
    assert (labels[top] == rarest).sum() in [(labels[key] == rarest).sum() for key in chosen]

    # every validation logged the same slices, each with its ground truth and hard pixels
    (wb_dir,) = (tiny_env / "run" / "wandb").glob("offline-run-*")
    history, _ = history_and_summary(wb_dir)
    rows = [r for r in history if "val/examples/captions" in r]
    assert len(rows) == 2  # one per epoch
    for row in rows:
        captions = row["val/examples/captions"]
        assert [c.split(":")[0] for c in captions] == [f"{case} slice {z}" for case, z in chosen]
        for (case, z), masks in zip(chosen, row["val/examples/all_masks"], strict=True):
            assert any(name.startswith("hard_pixels/") for name in masks)
            truth = np.array(Image.open(wb_dir / "files" / masks["ground_truth"]["path"]))
            np.testing.assert_array_equal(truth, labels[(case, z)])
