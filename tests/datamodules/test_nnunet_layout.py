"""dataset.json parsing and case discovery of nnU-Net v2 / MSD datasets (datamodules.nnunet_layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.nnunet_layout import (
    DatasetError,
    find_cases,
    labelled_test_cases,
    read_dataset_json,
    training_cases,
)
from tests.datamodules.nnunet_datasets import write_msd, write_png, write_v2


def _edit_json(ds: Path, **changes) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (ds / "dataset.json").write_text(json.dumps(meta))


def test_v2_dataset_json(tmp_path: Path) -> None:
    info = read_dataset_json(write_v2(tmp_path))
    assert info.name == "Dataset001_Tiny"
    assert info.channel_names == ("CT", "T2")
    assert info.class_names == ("background", "organ", "lesion")
    assert info.ignore_label == 3
    assert (info.file_ending, info.num_training, info.msd) == (".nii.gz", 6, False)


def test_v2_cases_group_channels_and_skip_debris(tmp_path: Path) -> None:
    info = read_dataset_json(write_v2(tmp_path))
    cases = training_cases(info)
    # ids keep their underscores: file name less len(".nii.gz") + 5 characters
    assert [c.case_id for c in cases] == [f"tiny_case_{i:03d}" for i in range(6)]
    assert [p.name for p in cases[0].images] == [
        "tiny_case_000_0000.nii.gz",
        "tiny_case_000_0001.nii.gz",
    ]
    assert cases[0].label.name == "tiny_case_000.nii.gz"
    assert [c.case_id for c in labelled_test_cases(info)] == ["tiny_case_100", "tiny_case_101"]


def test_msd_dataset_json(tmp_path: Path) -> None:
    info = read_dataset_json(write_msd(tmp_path))
    assert info.msd and info.channel_names == ("FLAIR", "T1w")
    assert info.class_names == ("background", "tumour")
    cases = training_cases(info)
    assert [c.case_id for c in cases] == [f"tiny_{i:03d}" for i in range(5)]
    assert cases[0].images[0].name == "tiny_000.nii.gz"
    assert labelled_test_cases(info) == []  # imagesTs without labelsTs


def test_png_dataset_has_one_file_per_case(tmp_path: Path) -> None:
    info = read_dataset_json(write_png(tmp_path))
    cases = training_cases(info)
    assert len(cases) == 5 and all(len(c.images) == 1 for c in cases)
    assert info.channel_names == ("R", "G", "B")


def test_dataset_key_lists_files(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    listed = {
        "a": {
            "images": ["imagesTr/tiny_case_001_0000.nii.gz", "imagesTr/tiny_case_001_0001.nii.gz"],
            "label": "labelsTr/tiny_case_001.nii.gz",
        },
    }
    _edit_json(ds, dataset=listed, numTraining=1)
    cases = training_cases(read_dataset_json(ds))
    assert [c.case_id for c in cases] == ["a"]
    assert cases[0].label == ds / "labelsTr" / "tiny_case_001.nii.gz"


def test_channel_and_label_keys_ignore_other_endings(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "imagesTr" / "notes.txt").write_text("not an image")
    (ds / "imagesTr" / ".hidden_0000.nii.gz").write_bytes(b"")
    assert len(training_cases(read_dataset_json(ds))) == 6


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"labels": {"background": 0, "a": 1, "b": 3}}, "consecutive"),
        ({"labels": {"background": 1, "a": 2}}, "consecutive"),
        ({"labels": {"background": 0, "a": 1, "ignore": 5}}, "ignore"),
        (
            {"labels": {"background": 0, "a": 1, "ab": [1, 2]}, "regions_class_order": [1, 2]},
            "region",
        ),
        ({"file_ending": ".jpg"}, "lossy"),
        ({"file_ending": ".xyz"}, "no reader"),
        ({"channel_names": None}, "channel_names"),
        ({"numTraining": None}, "numTraining"),
        ({"channel_names": {"0": "CT", "2": "T2"}}, "0..1"),
    ],
)
def test_bad_dataset_json_one_line(tmp_path: Path, changes: dict, match: str) -> None:
    ds = write_v2(tmp_path)
    _edit_json(ds, **changes)
    with pytest.raises(DatasetError, match=match) as info:
        read_dataset_json(ds)
    assert "dataset.json" in str(info.value) and "\n" not in str(info.value)


def test_missing_dataset_json(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json not found"):
        read_dataset_json(ds)


def test_missing_channel_file_names_case_and_file(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "imagesTr" / "tiny_case_003_0001.nii.gz").unlink()
    with pytest.raises(
        DatasetError, match=r"Case tiny_case_003: channel file .*tiny_case_003_0001"
    ):
        training_cases(read_dataset_json(ds))


def test_case_without_any_image_file(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    for channel in range(2):
        (ds / "imagesTr" / f"tiny_case_001_000{channel}.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"Case tiny_case_001: label .* has no image files"):
        training_cases(read_dataset_json(ds))


def test_missing_label_file(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "labelsTr" / "tiny_case_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"Case tiny_case_002: label file .*missing"):
        training_cases(read_dataset_json(ds))


def test_num_training_mismatch(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    _edit_json(ds, numTraining=7)
    with pytest.raises(DatasetError, match="numTraining is 7 but 6"):
        training_cases(read_dataset_json(ds))


def test_bad_image_name(tmp_path: Path) -> None:
    ds = write_v2(tmp_path)
    (ds / "imagesTr" / "x.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="_XXXX"):
        find_cases(read_dataset_json(ds), ds / "imagesTr", None)
