"""Slice transforms: image and mask on one pixel grid (both protocols), and the ``transunet``
protocol's training samples against scipy calls made as TransUNet's ``RandomGenerator`` makes
them (re-derived here, never taken from the code under test)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import ndimage

from datamodules import PhantomDataModule
from datamodules.transforms import (
    TransUNetTransform,
    _rotation_index,
    _zoom_index,
    build_eval_transform,
    build_train_transform,
)


def blob_mask(
    h: int, w: int, seed: int, count: int = 8, radii: tuple[float, float] = (0.04, 0.12)
) -> np.ndarray:
    """A binary mask of ``count`` random ellipses (semi-axes ``radii`` of the side), centred in
    the middle 60 % of an (h, w) slice, holes filled."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(count):
        cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
        ry, rx = rng.uniform(*radii) * h, rng.uniform(*radii) * w
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
    # no one-pixel holes between touching ellipses: sub-pixel detail that a downscale may keep
    # in the interpolated image and drop from the nearest-neighbour mask
    return ndimage.binary_fill_holes(mask).astype(np.uint8)


def grid_agreement(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, bool]:
    """Compare a transformed mask-shaped image, thresholded at 0.5, with the transformed mask.

    Returns (centroid offset in output pixels, disagreeing pixels / pixels within one pixel of
    the label boundary, whether every disagreeing pixel lies within two pixels of the label
    boundary: a downscaled sub-pixel notch can flip a pixel whose 3x3 neighbours all agree)."""
    thr, lab = image > 0.5, mask > 0
    offset = np.linalg.norm(
        np.array(ndimage.center_of_mass(thr)) - np.array(ndimage.center_of_mass(lab))
    )
    near = ndimage.binary_dilation(lab, np.ones((5, 5), bool))
    near &= ~ndimage.binary_erosion(lab, np.ones((5, 5), bool))
    square = np.ones((3, 3), bool)
    band = ndimage.binary_dilation(lab, square) & ~ndimage.binary_erosion(lab, square)
    wrong = thr != lab
    return float(offset), wrong.sum() / band.sum(), bool(np.all(near[wrong]))


@pytest.mark.parametrize("protocol", ["default", "transunet"])
@pytest.mark.parametrize("stage", ["train", "eval"])
@pytest.mark.parametrize(("shape", "size"), [((300, 437), 224), ((97, 150), 64)])
def test_image_and_mask_stay_on_one_pixel_grid(protocol, stage, shape, size) -> None:
    """Non-square slices, sizes no multiple of the output size. Measured on these masks: the
    old OpenCV pipeline (INTER_NEAREST masks, corner convention: half an output pixel along
    each axis) gave mean centroid offsets of 0.69-0.72 output pixels (max 0.95) and 0.18-0.19
    disagreeing pixels per boundary pixel (max 0.22); both protocols now give 0.06-0.11
    (max 0.19) and 0.016-0.029 (max 0.064)."""
    build = build_train_transform if stage == "train" else build_eval_transform
    transform = build(size, protocol)
    transform.set_random_seed(0)
    offsets, fractions = [], []
    for seed in range(10):
        mask = blob_mask(*shape, seed)
        out = transform(image=mask.astype(np.float32)[:, :, None], mask=mask)
        assert out["image"].shape == (size, size, 1) and out["mask"].shape == (size, size)
        assert out["image"].dtype == np.float32 and out["mask"].dtype == np.uint8
        offset, fraction, on_boundary = grid_agreement(out["image"][:, :, 0], out["mask"])
        assert on_boundary, "image and mask disagree away from the mask's boundary"
        offsets.append(offset)
        fractions.append(fraction)
    assert np.mean(offsets) < 0.2, offsets
    assert max(offsets) < 0.4, offsets
    assert np.mean(fractions) < 0.06 and max(fractions) < 0.15, fractions


def test_default_eval_mask_is_nearest_on_pixel_centres() -> None:
    """OpenCV's INTER_NEAREST_EXACT, checked by hand: output pixel i reads input pixel
    floor((i + 0.5) * n_in / n_out), for down- and upscaling of a non-square label."""
    rng = np.random.default_rng(0)
    for (h, w), s in [((300, 437), 224), ((37, 51), 64)]:
        label = rng.integers(0, 9, (h, w)).astype(np.uint8)
        out = build_eval_transform(s)(image=label.astype(np.float32)[:, :, None], mask=label)
        rows = np.floor((np.arange(s) + 0.5) * h / s).astype(int)
        cols = np.floor((np.arange(s) + 0.5) * w / s).astype(int)
        np.testing.assert_array_equal(out["mask"], label[np.ix_(rows, cols)])


@pytest.mark.parametrize("shape", [(45, 61), (61, 45), (32, 32)])
def test_transunet_index_maps_reproduce_scipy_exactly(shape) -> None:
    """The cached nearest-neighbour index maps equal scipy's own rotate / zoom (order=0)."""
    rng = np.random.default_rng(1)
    image = rng.random(shape).astype(np.float32)
    label = rng.integers(0, 9, shape).astype(np.uint8)
    for angle in range(-20, 20):
        index = _rotation_index(shape, angle)
        for array in (image, label):
            padded = np.concatenate([[0], array.ravel()]).astype(array.dtype)
            ref = ndimage.rotate(array, angle, order=0, reshape=False)
            np.testing.assert_array_equal(padded[index], ref)
    for size in (16, 32, 100):
        ref = ndimage.zoom(label, (size / shape[0], size / shape[1]), order=0)
        padded = np.concatenate([[0], label.ravel()]).astype(label.dtype)
        np.testing.assert_array_equal(padded[_zoom_index(shape, size)], ref)


# ------------------------------------------------------------------ TransUNet's RandomGenerator
def _zoom_like_transunet(image: np.ndarray, label: np.ndarray, s: int):
    """TransUNet: zoom(image, (s / x, s / y), order=3), zoom(label, ..., order=0)."""
    x, y = image.shape
    if (x, y) == (s, s):
        return image, label
    return (
        ndimage.zoom(image, (s / x, s / y), order=3),
        ndimage.zoom(label, (s / x, s / y), order=0),
    )


def _transunet_candidates(image: np.ndarray, label: np.ndarray, s: int) -> list:
    """Every outcome of RandomGenerator for one slice, as (branch, parameter, image, label)."""
    out = [("identity", None, *_zoom_like_transunet(image, label, s))]
    for k in range(4):
        for axis in range(2):
            im = np.flip(np.rot90(image, k), axis=axis).copy()
            lb = np.flip(np.rot90(label, k), axis=axis).copy()
            out.append(("rot90+flip", (k, axis), *_zoom_like_transunet(im, lb, s)))
    for angle in range(-25, 26):  # wider than TransUNet's [-20, 19]: must never match
        im = ndimage.rotate(image, angle, order=0, reshape=False)
        lb = ndimage.rotate(label, angle, order=0, reshape=False)
        out.append(("rotate", angle, *_zoom_like_transunet(im, lb, s)))
    return out


@pytest.fixture(scope="module")
def transunet_phantom(tmp_path_factory) -> PhantomDataModule:
    """A tiny phantom of non-square 45x61 slices, TransUNet protocol, 32x32 samples."""
    root = tmp_path_factory.mktemp("transunet_phantom")
    dm = PhantomDataModule(
        data_dir=str(root),
        num_train=1,
        num_val=1,
        num_test=1,
        volume_shape=(4, 45, 61),
        image_size=32,
        batch_size=8,
        num_workers=0,
        progress=False,
        protocol="transunet",
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _stored(dm: PhantomDataModule, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    ds = dm.train_set if split == "train" else dm.val_set
    case, z = ds.cases[int(ds.case_index[index])], int(ds.slice_index[index])
    with h5py.File(dm.split_path(split), "r") as f:
        return f[case]["image"][0, z], f[case]["label"][z]


def test_transunet_training_samples_follow_random_generator(transunet_phantom) -> None:
    """Each sample is exactly one of RandomGenerator's outcomes, recomputed with scipy, and
    the branches come with TransUNet's probabilities: 0.5 rot90 + flip, 0.25 rotation by an
    integer angle in [-20, 19] (nearest neighbour), 0.25 neither."""
    dm = transunet_phantom
    ds = dm.train_set
    ds.transform.set_random_seed(123)
    candidates = [_transunet_candidates(*_stored(dm, "train", i), 32) for i in range(len(ds))]
    counts = {"identity": 0, "rot90+flip": 0, "rotate": 0}
    angles: list[int] = []
    trials = 480
    for t in range(trials):
        i = t % len(ds)
        item = ds[i]
        image, label = item["image"].numpy(), item["label"].numpy()
        assert image.shape == (1, 32, 32) and label.shape == (32, 32)
        matches = [
            (branch, param)
            for branch, param, im, lb in candidates[i]
            if np.array_equal(image[0], im) and np.array_equal(label, lb)
        ]
        assert matches, f"sample {t} is none of RandomGenerator's outcomes"
        branch, param = matches[0]  # identity first: rotate(0) gives the identity too
        counts[branch] += 1
        if branch == "rotate":
            angles.append(param)
    # rotate(angle=0) looks like the identity: P = 0.25 + 0.25 / 40 and 0.25 - 0.25 / 40
    assert abs(counts["rot90+flip"] / trials - 0.5) < 0.07, counts
    assert abs(counts["rotate"] / trials - 0.25 * 39 / 40) < 0.06, counts
    assert abs(counts["identity"] / trials - 0.25 * 41 / 40) < 0.06, counts
    assert min(angles) >= -20 and max(angles) <= 19, angles
    assert min(angles) < -10 and max(angles) > 10, angles  # the whole range is drawn


def test_transunet_validation_is_scipy_zoom_only(transunet_phantom) -> None:
    dm = transunet_phantom
    dm.setup("validate")
    for i in range(len(dm.val_set)):
        item = dm.val_set[i]
        image, label = _zoom_like_transunet(*_stored(dm, "val", i), 32)
        np.testing.assert_array_equal(item["image"].numpy()[0], image)
        np.testing.assert_array_equal(item["label"].numpy(), label)


def test_transunet_loader_batches(transunet_phantom) -> None:
    batch = next(iter(transunet_phantom.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and str(batch["image"].dtype) == "torch.float32"
    assert batch["label"].shape == (4, 32, 32) and str(batch["label"].dtype) == "torch.int64"


def test_transunet_transform_on_several_channels_is_channel_by_channel() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((45, 61, 2)).astype(np.float32)
    label = rng.integers(0, 3, (45, 61)).astype(np.uint8)
    for seed in range(12):
        both = TransUNetTransform(32, seed=seed)(image=image, mask=label)
        for c in range(2):
            one = TransUNetTransform(32, seed=seed)(image=image[:, :, c], mask=label)
            np.testing.assert_array_equal(both["image"][:, :, c], one["image"])
            np.testing.assert_array_equal(both["mask"], one["mask"])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_train_transform(32, "nnunet"), r"`protocol`.*'nnunet'"),
        (lambda: build_eval_transform(0), r"`image_size`"),
        (lambda: PhantomDataModule(data_dir="x", protocol="TransUNet"), r"`protocol`"),
        (
            lambda: TransUNetTransform(8)(image=np.zeros((4, 5)), mask=np.zeros((5, 4))),
            r"one size",
        ),
    ],
)
def test_bad_arguments(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
