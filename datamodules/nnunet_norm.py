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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "SCHEMES",
    "foreground_statistics",
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


def normalize_channel(
    channel: np.ndarray,
    channel_name: str,
    ct_stats: dict[str, float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Normalize one channel (any shape) by its scheme into ``out`` (float32, same shape;
    default a new array) and return it; ``out`` may be ``channel`` itself.

    Raises:
        ValueError: ``CT`` without ``ct_stats``; ``rgb_to_0_1`` on values outside [0, 255].
    """
    scheme = scheme_of(channel_name)
    if out is None:
        out = np.empty(np.shape(channel), np.float32)
    if scheme == "rgb_to_0_1":
        lo, hi = np.min(channel), np.max(channel)  # of the input: a uint8 one is 4x smaller
        if lo < 0 or hi > 255:
            raise ValueError(
                f"Channel {channel_name!r} (rgb_to_0_1) holds values outside [0, 255]: [{lo}, {hi}]"
            )
        return np.divide(channel, np.float32(255.0), out=out, dtype=np.float32)  # one pass
    if out is not channel:
        out[...] = channel
    if scheme == "nonorm":
        return out
    if scheme == "ct":
        if ct_stats is None:
            raise ValueError(f"Channel {channel_name!r} (CT) needs the dataset's CT statistics")
        np.clip(out, ct_stats["percentile_00_5"], ct_stats["percentile_99_5"], out=out)
        out -= np.float32(ct_stats["mean"])
        out /= np.float32(max(ct_stats["std"], 1e-8))
        return out
    if scheme == "rescale_to_0_1":
        out -= out.min()
        out /= np.float32(max(float(out.max()), 1e-8))
        return out
    out -= out.mean()  # float32, as nnU-Net computes it
    flat = out.reshape(-1)
    # the standard deviation of the centred values in one pass without a copy: dot products
    # of 2^16 values (float32, exact enough at that length) summed in float64
    squares = sum(float(np.dot(c, c)) for c in np.split(flat, range(1 << 16, flat.size, 1 << 16)))
    std = np.float32(np.sqrt(squares / max(flat.size, 1)))
    out /= max(std, np.float32(1e-8))
    return out


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
