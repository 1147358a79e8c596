"""Benchmark HD95 of one organ in a 100x512x512 CT-like volume: models.metrics vs medpy.

The ground truth is a smooth irregular blob (about the size of a kidney at 0.8 mm in-plane); the
prediction is the ground truth dilated by two voxels and shifted by (1, 3, -2) voxels, plus three small false-positive blobs far
away (which stretch the union's bounding box to almost the whole volume, the hard case for a
bounding-box crop). Both implementations run on the same masks in the same process; the script
prints the times, the ratio and both values, and exits with status 1 if the values disagree.

Run: ``make bench-eval`` or ``.venv/bin/python scripts/bench_eval.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
from scipy import ndimage as ndi

from models.metrics import compute_case_metrics, hd95

SHAPE = (100, 512, 512)
SPACING = (2.5, 0.8, 0.8)  # mm, array axis order (D, H, W)
TOLERANCE = 1e-6


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth and predicted boolean masks of shape SHAPE."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, dtype=bool)
    # Irregular ellipsoid: radius modulated by smooth noise, built on its bounding box only.
    centre = np.array([50, 260, 240])
    semi = np.array([22, 70, 55])  # voxels: 55 mm x 56 mm x 44 mm
    box = tuple(slice(c - s - 8, c + s + 9) for c, s in zip(centre, semi, strict=True))
    grid = np.stack(
        np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij"), axis=0
    ).astype(np.float64)
    r = np.sqrt(sum(((grid[i] - centre[i]) / semi[i]) ** 2 for i in range(3)))
    noise = ndi.gaussian_filter(rng.standard_normal(r.shape), sigma=6.0)
    noise /= np.abs(noise).max()
    gt[box] = r < 1.0 + 0.25 * noise
    pred = gt.copy()
    pred[box] = ndi.binary_dilation(gt[box], iterations=2)
    pred = np.roll(pred, shift=(1, 3, -2), axis=(0, 1, 2))  # and slightly misplaced
    # Three small false positives far from the organ.
    for z, y, x in ((10, 30, 30), (90, 480, 60), (80, 40, 470)):
        zz, yy, xx = np.ogrid[z - 3 : z + 4, y - 4 : y + 5, x - 4 : x + 5]
        pred[z - 3 : z + 4, y - 4 : y + 5, x - 4 : x + 5] |= (
            ((zz - z) / 3.0) ** 2 + ((yy - y) / 4.0) ** 2 + ((xx - x) / 4.0) ** 2
        ) <= 1.0
    return gt, pred


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(best wall time in seconds, value) over ``repeats`` calls."""
    best, value = np.inf, np.nan
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--medpy-repeats", type=int, default=1, help="timed runs of medpy")
    args = parser.parse_args()

    from medpy.metric.binary import hd95 as medpy_hd95

    gt, pred = make_case()
    labels_gt = gt.astype(np.uint8)
    labels_pred = pred.astype(np.uint8)
    print(
        f"volume {SHAPE}, spacing {SPACING} mm, GT {int(gt.sum())} voxels, "
        f"prediction {int(pred.sum())} voxels (shifted dilated GT + 3 far false positives)"
    )
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")

    t_ours, v_ours = best_of(lambda: hd95(pred, gt, SPACING), args.repeats)
    t_case, m_case = best_of(
        lambda: compute_case_metrics(labels_pred, labels_gt, 2, spacing=SPACING), args.repeats
    )
    t_medpy, v_medpy = best_of(
        lambda: medpy_hd95(pred, gt, voxelspacing=SPACING), args.medpy_repeats
    )
    v_case = float(m_case["hd95"][0])

    rows = [
        ("medpy.metric.binary.hd95", t_medpy, v_medpy, 1.0),
        ("models.metrics.hd95", t_ours, v_ours, t_medpy / t_ours),
        ("compute_case_metrics (all 5)", t_case, v_case, t_medpy / t_case),
    ]
    print()
    print(f"{'implementation':<30} {'time [s]':>9} {'HD95 [mm]':>12} {'speed-up':>9}")
    for name, t, v, ratio in rows:
        print(f"{name:<30} {t:>9.3f} {v:>12.6f} {ratio:>8.1f}x")
    diff = max(abs(v_ours - v_medpy), abs(v_case - v_medpy))
    ok = diff <= TOLERANCE
    print()
    print(f"max |ours - medpy| = {diff:.3g} ({'OK' if ok else 'MISMATCH'}, tolerance {TOLERANCE})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
