"""nnU-Net's intensity normalization, chosen per channel by its ``channel_names`` entry.

Matched case-insensitively (nnU-Net's ``get_normalization_scheme``), for a channel x:

- ``CT``: ``(clip(x, p0.5, p99.5) - mean) / max(std, 1e-8)`` with the 0.5 / 99.5 percentiles,
  mean and std of foreground intensities sampled from every training case as nnU-Net's
  fingerprint samples them (:func:`sample_foreground`, :func:`foreground_statistics`);
- ``noNorm``: x unchanged (as float32);
- ``rescale_to_0_1``: ``(x - min) / max(max - min, 1e-8)`` per image;
- ``rgb_to_0_1``: ``x / 255``;
- ``zscore`` and any other name: ``(x - mean) / max(std, 1e-8)`` over the whole image
  (nnU-Net's ``ZScoreNormalization`` without its foreground mask).

Each scheme is an intensity map (``datamodules.intensity``) computed from the channel
(:func:`intensity_map`); :func:`normalize_channel` applies it, and the prepared files store it
so that the loaders apply it to the raw values they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from datamodules.intensity import IntensityMap, apply_intensity_map

__all__ = [
    "SCHEMES",
    "foreground_statistics",
    "intensity_map",
    "normalize_channel",
    "normalize_image",
    "sample_foreground",
    "scheme_of",
]

SCHEMES = ("ct", "nonorm", "zscore", "rescale_to_0_1", "rgb_to_0_1")
#: foreground intensities drawn per CT channel over the whole training set, split evenly over
#: the cases (nnU-Net draws 10^8; 10^6 estimates the percentiles, mean and std to about 0.1 %
#: of the standard deviation and keeps the sampling well within the reading time)
TOTAL_FOREGROUND_SAMPLES = 10**6


def scheme_of(channel_name: str) -> str:
    """The normalization scheme of a channel name (``zscore`` for unknown names)."""
    name = channel_name.casefold()
    return name if name in SCHEMES else "zscore"


def sample_foreground(
    channels: Sequence[np.ndarray],
    label: np.ndarray,
    wanted: Sequence[int],
    num_samples: int,
    order: str = "C",
    seed: int = 1234,
) -> dict[int, np.ndarray]:
    """Foreground (``label > 0``) intensities of one case, drawn as nnU-Net's fingerprint does.

    One ``numpy.random.RandomState(seed)`` per case draws ``num_samples`` indices with
    replacement for every channel in turn; the intensities are taken in the array order
    ``order`` (``"F"`` for raw (X, Y, Z) volumes: nnU-Net reads them as (Z, Y, X)).

    Returns:
        ``{channel: float32 (num_samples,)}`` for the channels in ``wanted`` (empty arrays
        when the case has no foreground).
    """
    mask = np.asarray(label).ravel(order=order) > 0
    n_fg = int(mask.sum())
    if n_fg == 0:
        return {c: np.empty(0, np.float32) for c in wanted}
    rs = np.random.RandomState(seed)
    out = {}
    for c, channel in enumerate(channels):
        idx = rs.randint(0, n_fg, size=num_samples)  # what RandomState.choice draws
        if c in wanted:
            values = np.asarray(channel).ravel(order=order)[mask].astype(np.float32, copy=False)
            out[c] = values[idx]
    return out


def foreground_statistics(samples: Iterable[np.ndarray]) -> dict[str, float]:
    """``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5`` of pooled foreground
    samples (float32, as nnU-Net pools them).

    Raises:
        ValueError: no foreground at all.
    """
    pooled = np.concatenate([np.asarray(s, np.float32).ravel() for s in samples] or [[]])
    if pooled.size == 0:
        raise ValueError("CT normalization needs foreground voxels in the training labels")
    lo, hi = np.percentile(pooled, (0.5, 99.5))
    return {
        "mean": float(np.mean(pooled)),
        "std": float(np.std(pooled)),
        "percentile_00_5": float(lo),
        "percentile_99_5": float(hi),
    }


def intensity_map(
    channel: np.ndarray, channel_name: str, ct_stats: dict[str, float] | None = None
) -> IntensityMap:
    """The map (``datamodules.intensity``) that normalizes one channel (any shape, raw values)
    by its scheme: ``clip`` (CT only), ``shift`` and ``scale``, as nnU-Net's classes compute
    them in float32 (a z-score's mean over the float32 image, its standard deviation of the
    centred float32 values summed in float64).

    Raises:
        ValueError: ``CT`` without ``ct_stats``; ``rgb_to_0_1`` on values outside [0, 255].
    """
    scheme = scheme_of(channel_name)
    if scheme == "ct":
        if ct_stats is None:
            raise ValueError(f"Channel {channel_name!r} (CT) needs the dataset's CT statistics")
        clip = [float(ct_stats["percentile_00_5"]), float(ct_stats["percentile_99_5"])]
        return {"clip": clip, "shift": float(ct_stats["mean"]), "scale": max(ct_stats["std"], 1e-8)}
    if scheme == "nonorm":
        return {"clip": None, "shift": 0.0, "scale": 1.0}
    if scheme == "rgb_to_0_1":
        lo, hi = np.min(channel), np.max(channel)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"Channel {channel_name!r} (rgb_to_0_1) holds values outside [0, 255]: [{lo}, {hi}]"
            )
        return {"clip": None, "shift": 0.0, "scale": 255.0}
    if scheme == "rescale_to_0_1":
        # float32 rounding is monotonic: min / max of the float32 values are those of the raw
        low, high = np.float32(np.min(channel)), np.float32(np.max(channel))
        return {"clip": None, "shift": float(low), "scale": max(float(high - low), 1e-8)}
    image = np.ascontiguousarray(channel, dtype=np.float32).reshape(-1)
    mean = image.mean()  # float32, as nnU-Net computes it
    # the standard deviation of the centred values in 2^16-value blocks (float32 dot products,
    # exact enough at that length, summed in float64), without a centred copy of the image
    squares = sum(
        float(np.dot(block, block))
        for block in (image[i : i + (1 << 16)] - mean for i in range(0, image.size, 1 << 16))
    )
    std = np.float32(np.sqrt(squares / max(image.size, 1)))
    return {"clip": None, "shift": float(mean), "scale": float(max(std, np.float32(1e-8)))}


def normalize_channel(
    channel: np.ndarray,
    channel_name: str,
    ct_stats: dict[str, float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Normalize one channel (any shape) by its scheme into ``out`` (float32, same shape;
    default a new array) and return it; ``out`` may be ``channel`` itself. The values are
    those a stored raw channel gives through its :func:`intensity_map`, bit for bit.

    Raises:
        ValueError: as :func:`intensity_map`.
    """
    spec = intensity_map(channel, channel_name, ct_stats)
    return apply_intensity_map(channel, spec, out=out)


def normalize_image(
    channels: Sequence[np.ndarray],
    channel_names: Sequence[str],
    ct_stats: Sequence[dict[str, float] | None],
) -> np.ndarray:
    """Stack normalized channels into float32 (C, *spatial)."""
    return np.stack(
        [
            normalize_channel(x, name, stats)
            for x, name, stats in zip(channels, channel_names, ct_stats, strict=True)
        ]
    )
