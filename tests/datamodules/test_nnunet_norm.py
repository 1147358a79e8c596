"""nnU-Net intensity normalization (datamodules.nnunet_norm) against nnunetv2's own classes."""

from __future__ import annotations

import numpy as np
import pytest
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
    DatasetFingerprintExtractor,
)
from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
    CTNormalization,
    NoNormalization,
    RescaleTo01Normalization,
    RGBTo01Normalization,
    ZScoreNormalization,
)

from datamodules.nnunet_norm import (
    foreground_statistics,
    normalize_channel,
    sample_foreground,
    scheme_of,
)

RNG = np.random.default_rng(3)
STATS = {"mean": 45.0, "std": 120.0, "percentile_00_5": -300.0, "percentile_99_5": 900.0}


def _reference(cls, image: np.ndarray, stats: dict | None = None) -> np.ndarray:
    norm = cls(use_mask_for_norm=False, intensityproperties=stats or {}, target_dtype=np.float32)
    return norm.run(image.copy())


@pytest.mark.parametrize(
    ("name", "cls", "image"),
    [
        ("CT", CTNormalization, RNG.normal(0, 500, (4, 9, 7)).astype(np.int16)),
        ("ct", CTNormalization, RNG.normal(0, 500, (4, 9, 7)).astype(np.float32)),
        ("noNorm", NoNormalization, RNG.normal(3, 2, (4, 9, 7))),
        ("zscore", ZScoreNormalization, RNG.normal(300, 40, (4, 9, 7)).astype(np.float32)),
        ("T2", ZScoreNormalization, RNG.integers(0, 4000, (4, 9, 7)).astype(np.uint16)),
        ("rescale_to_0_1", RescaleTo01Normalization, RNG.normal(5, 3, (4, 9, 7))),
        ("RGB_to_0_1", RGBTo01Normalization, RNG.integers(0, 256, (9, 7)).astype(np.uint8)),
    ],
)
def test_matches_nnunetv2(name: str, cls, image: np.ndarray) -> None:
    stats = STATS if cls is CTNormalization else None
    ours = normalize_channel(image, name, stats)
    ref = _reference(cls, image, stats)
    assert ours.dtype == np.float32 and ours.shape == image.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_scheme_names_are_case_insensitive() -> None:
    assert [scheme_of(n) for n in ("CT", "NONORM", "Rescale_To_0_1", "flair")] == [
        "ct",
        "nonorm",
        "rescale_to_0_1",
        "zscore",
    ]


def test_constant_image_gives_zeros_not_nan() -> None:
    out = normalize_channel(np.full((3, 4), 7.0), "MRI")
    assert np.array_equal(out, np.zeros((3, 4), np.float32))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="CT statistics"):
        normalize_channel(np.zeros((2, 2)), "CT")
    with pytest.raises(ValueError, match=r"outside \[0, 255\]"):
        normalize_channel(np.full((2, 2), 300.0), "rgb_to_0_1")


def test_foreground_sampling_matches_fingerprint_extractor() -> None:
    """nnU-Net reads a raw (X, Y, Z) volume as (Z, Y, X); our raw arrays sample in F order."""
    samples_ours: list[list[np.ndarray]] = [[], []]
    samples_ref: list[list[np.ndarray]] = [[], []]
    for case in range(3):
        rng = np.random.default_rng(case)
        raw = [rng.normal(0, 100, (6, 5, 4)).astype(np.float32) for _ in range(2)]
        label = rng.integers(0, 3, (6, 5, 4)).astype(np.uint8)
        ours = sample_foreground(raw, label, [0, 1], 500, order="F")
        images = np.stack([x.transpose(2, 1, 0) for x in raw])
        seg = label.transpose(2, 1, 0)[None]
        ref, _ = DatasetFingerprintExtractor.collect_foreground_intensities(seg, images, 1234, 500)
        for c in range(2):
            np.testing.assert_array_equal(ours[c], ref[c])
            samples_ours[c].append(ours[c])
            samples_ref[c].append(ref[c])
    for c in range(2):
        pooled = np.concatenate(samples_ref[c])
        stats = foreground_statistics(samples_ours[c])
        assert stats["mean"] == pytest.approx(float(np.mean(pooled)), rel=1e-6)
        assert stats["std"] == pytest.approx(float(np.std(pooled)), rel=1e-6)
        lo, hi = np.percentile(pooled, (0.5, 99.5))
        assert (stats["percentile_00_5"], stats["percentile_99_5"]) == (float(lo), float(hi))


def test_no_foreground() -> None:
    out = sample_foreground([np.ones((2, 2))], np.zeros((2, 2)), [0], 10)
    assert out[0].size == 0
    with pytest.raises(ValueError, match="foreground"):
        foreground_statistics([out[0]])
