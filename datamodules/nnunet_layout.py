"""nnU-Net v2 / Medical Segmentation Decathlon raw datasets: ``dataset.json`` and case files.

nnU-Net v2 (``DatasetXXX_Name/``): ``channel_names`` {"0": "CT", ...}, ``labels`` {name: int},
``numTraining``, ``file_ending``; images ``imagesTr/<case>_XXXX<file_ending>`` (one file per
channel file), labels ``labelsTr/<case><file_ending>``; the case id is the file name less
``len(file_ending) + 5`` characters. An optional ``dataset`` key lists each case's files.
MSD (``TaskXX_Name/``): ``modality`` {"0": "CT"}, ``labels`` {"0": "background", ...} and a
``training`` list of ``{"image": "./imagesTr/x.nii.gz", "label": ...}``; one 4D image per case,
modality last. Labels are consecutive from background 0; an ``ignore`` label (value max + 1)
marks pixels that train nothing. Every error is one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CaseFiles",
    "DatasetError",
    "DatasetInfo",
    "find_cases",
    "labelled_test_cases",
    "read_dataset_json",
    "training_cases",
]

#: file endings with a reader (``.nrrd`` / ``.mha`` need SimpleITK, see ``nnunet_io``)
READABLE_ENDINGS = (".nii.gz", ".nii", ".png", ".bmp", ".tif", ".nrrd", ".mha")


class DatasetError(ValueError):
    """A raw dataset that does not follow the nnU-Net / MSD layout (one-line message)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says.

    Attributes:
        root: the dataset folder; ``name`` its folder name.
        channel_names: one name per input channel (normalization scheme, e.g. ``CT``).
        class_names: label names by value, background first (the ignore label excluded).
        ignore_label: value of the ``ignore`` label, or ``None``.
        file_ending: e.g. ``.nii.gz``; ``num_training``: declared number of training cases.
        msd: MSD layout (one 4D image per case, modality last).
        listed: explicit ``{case: (image files, label file)}`` from the ``dataset`` or
            ``training`` key, or ``None`` to discover the files.
    """

    root: Path
    name: str
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    ignore_label: int | None
    file_ending: str
    num_training: int
    msd: bool
    listed: dict[str, tuple[tuple[Path, ...], Path | None]] | None = None


@dataclass(frozen=True)
class CaseFiles:
    """One case: its id, its image files (channel order) and its label file (or ``None``)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: an nnU-Net v2 or MSD dataset folder needs a dataset.json next "
            f"to imagesTr/ and labelsTr/"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _channels(data: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    entries = data.get(key)
    if not isinstance(entries, dict) or not entries:
        raise DatasetError(f"{path}: `{key}` must map channel numbers to names, got {entries!r}")
    try:
        order = sorted(entries, key=int)
    except ValueError as exc:
        raise DatasetError(f"{path}: `{key}` keys must be channel numbers, got {entries}") from exc
    if [int(k) for k in order] != list(range(len(order))):
        raise DatasetError(f"{path}: `{key}` keys must be 0..{len(order) - 1}, got {order}")
    return tuple(str(entries[k]) for k in order)


def _labels(data: dict[str, Any], msd: bool, path: Path) -> tuple[tuple[str, ...], int | None]:
    """``(class names by value, ignore value)`` from either labels convention."""
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{path}: `labels` must be a non-empty object, got {raw!r}")
    if msd:
        try:
            by_name = {str(name): int(value) for value, name in raw.items()}
        except ValueError as exc:
            raise DatasetError(f"{path}: MSD `labels` keys must be integers, got {raw}") from exc
    else:
        by_name = {}
        for name, value in raw.items():
            if isinstance(value, (list, tuple)) and len(value) > 1:
                raise DatasetError(
                    f"{path}: label {name!r} is a region {value} (region-based training with "
                    f"sigmoid outputs); only one integer per label is supported"
                )
            if isinstance(value, (list, tuple)):
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, int):
                raise DatasetError(f"{path}: label {name!r} must be an integer, got {value!r}")
            by_name[str(name)] = value
    ignore = by_name.pop("ignore", None)
    values = sorted(by_name.values())
    if values != list(range(len(values))) or len(set(by_name.values())) != len(by_name):
        raise DatasetError(
            f"{path}: labels must be consecutive integers from background 0, got {values}"
        )
    if ignore is not None and ignore != len(values):
        raise DatasetError(
            f"{path}: the `ignore` label must be {len(values)} (the largest label + 1), "
            f"got {ignore}"
        )
    names = {v: k for k, v in by_name.items()}
    return tuple(names[v] for v in range(len(values))), ignore


def _listed_cases(
    data: dict[str, Any], root: Path, msd: bool, path: Path
) -> dict[str, tuple[tuple[Path, ...], Path | None]] | None:
    if msd:
        training = data.get("training")
        if not isinstance(training, list):
            raise DatasetError(f"{path}: MSD `training` must be a list of image/label pairs")
        out = {}
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DatasetError(f"{path}: MSD `training` entry {entry!r} needs image, label")
            image = root / str(entry["image"])
            out[_strip(image.name, ".nii.gz")] = ((image,), root / str(entry["label"]))
        return out
    dataset = data.get("dataset")
    if dataset is None:
        return None
    if not isinstance(dataset, dict):
        raise DatasetError(f"{path}: `dataset` must map case ids to their files")
    out = {}
    for case, entry in dataset.items():
        if not isinstance(entry, dict) or "images" not in entry or "label" not in entry:
            raise DatasetError(f"{path}: `dataset` entry {case!r} needs `images` and `label`")
        images = tuple(root / str(p) for p in entry["images"])
        out[str(case)] = (images, root / str(entry["label"]))
    return out


def _strip(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name.rsplit(".", 1)[0]


def read_dataset_json(root: str | Path) -> DatasetInfo:
    """Parse ``root/dataset.json`` (nnU-Net v2 or MSD).

    Raises:
        DatasetError: missing or invalid file, non-consecutive labels, region labels, an
            ignore label that is not max + 1, a ``file_ending`` without reader.
    """
    root = Path(root)
    path = root / "dataset.json"
    data = _load_json(path)
    msd = "modality" in data and "channel_names" not in data
    channels = _channels(data, "modality" if msd else "channel_names", path)
    class_names, ignore = _labels(data, msd, path)
    if len(class_names) < 2:
        raise DatasetError(f"{path}: `labels` needs background and at least one class")
    ending = ".nii.gz" if msd else data.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DatasetError(f"{path}: `file_ending` must be a string such as '.nii.gz'")
    if ending.lower() in (".jpg", ".jpeg"):
        raise DatasetError(
            f"{path}: file_ending {ending!r} is lossy (JPEG changes label values); convert the "
            f"images to .png, as nnU-Net requires"
        )
    if ending not in READABLE_ENDINGS:
        raise DatasetError(
            f"{path}: no reader for file_ending {ending!r}; readable: {', '.join(READABLE_ENDINGS)}"
        )
    num_training = data.get("numTraining")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
        raise DatasetError(f"{path}: `numTraining` must be a positive int, got {num_training!r}")
    return DatasetInfo(
        root=root,
        name=root.resolve().name,
        channel_names=channels,
        class_names=class_names,
        ignore_label=ignore,
        file_ending=ending,
        num_training=num_training,
        msd=msd,
        listed=_listed_cases(data, root, msd, path),
    )


def _visible(path: Path, ending: str) -> bool:
    return path.is_file() and path.name.endswith(ending) and not path.name.startswith(".")


def find_cases(
    info: DatasetInfo, images_dir: str | Path, labels_dir: str | Path | None
) -> list[CaseFiles]:
    """The cases of an images folder (``imagesTr``, ``imagesTs``), sorted by id.

    nnU-Net v2: files ``<case>_XXXX<ending>`` grouped by case (channel files numbered from 0,
    none missing); MSD: ``<case>.nii.gz``. Hidden files (``.x``, macOS ``._x``) and other
    endings are ignored. With ``labels_dir``, each case needs ``<case><ending>`` there.

    Raises:
        DatasetError: a missing channel or label file, a folder without cases.
    """
    images_dir = Path(images_dir)
    ending = info.file_ending
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} not found: expected the dataset's images there")
    grouped: dict[str, dict[int, Path]] = {}
    for path in images_dir.iterdir():
        if not _visible(path, ending):
            continue
        if info.msd:
            grouped[path.name[: -len(ending)]] = {0: path}
            continue
        stem = path.name[: -len(ending)]
        case, number = stem[:-5], stem[-4:]
        if len(stem) < 6 or stem[-5] != "_" or not number.isdigit():
            raise DatasetError(
                f"{path}: image files must be named <case>_XXXX{ending} (XXXX the channel file)"
            )
        grouped.setdefault(case, {})[int(number)] = path
    if labels_dir is not None and Path(labels_dir).is_dir():
        for label in sorted(Path(labels_dir).iterdir()):
            case = label.name[: -len(ending)]
            if _visible(label, ending) and case not in grouped:
                first = f"{case}{ending}" if info.msd else f"{case}_0000{ending}"
                raise DatasetError(
                    f"Case {case}: label {label} has no image files (expected {images_dir / first})"
                )
    if not grouped:
        raise DatasetError(f"{images_dir} holds no image files ending in {ending!r}")
    expected = max(len(g) for g in grouped.values())
    cases = []
    for case in sorted(grouped):
        files = grouped[case]
        missing = [n for n in range(expected) if n not in files]
        if missing:
            raise DatasetError(
                f"Case {case}: channel file {images_dir / f'{case}_{missing[0]:04d}{ending}'} "
                f"is missing (other cases have {expected} channel files)"
            )
        label = None
        if labels_dir is not None:
            label = Path(labels_dir) / f"{case}{ending}"
            if not label.is_file():
                raise DatasetError(f"Case {case}: label file {label} is missing")
        cases.append(CaseFiles(case, tuple(files[n] for n in range(expected)), label))
    return cases


def training_cases(info: DatasetInfo) -> list[CaseFiles]:
    """The training cases (``dataset`` / ``training`` list, else ``imagesTr`` + ``labelsTr``),
    checked against ``numTraining``."""
    if info.listed is not None:
        cases = []
        for case in sorted(info.listed):
            images, label = info.listed[case]
            for path in (*images, label):
                if path is None or not path.is_file():
                    raise DatasetError(
                        f"Case {case}: file {path} listed in dataset.json is missing"
                    )
            cases.append(CaseFiles(case, images, label))
    else:
        cases = find_cases(info, info.root / "imagesTr", info.root / "labelsTr")
    if len(cases) != info.num_training:
        raise DatasetError(
            f"{info.root / 'dataset.json'}: numTraining is {info.num_training} but "
            f"{len(cases)} training cases were found"
        )
    return cases


def labelled_test_cases(info: DatasetInfo) -> list[CaseFiles]:
    """``imagesTs`` with ``labelsTs`` when both exist, else no cases."""
    images, labels = info.root / "imagesTs", info.root / "labelsTs"
    if not (images.is_dir() and labels.is_dir()):
        return []
    return find_cases(info, images, labels)
