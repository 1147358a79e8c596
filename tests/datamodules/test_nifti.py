"""Canonical orientation and its inverse, checked against world coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules import load_nifti_canonical, save_nifti_like
from datamodules.nifti import read_nifti
from tests.datamodules.conftest import write_nifti


@pytest.mark.parametrize("seed", range(6))
def test_canonical_matches_world_and_roundtrips(tmp_path, seed) -> None:
    rng = np.random.default_rng(seed)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(rng.uniform(0.5, 3.0, 3))
    affine[:3, 3] = rng.normal(size=3) * 10
    data = rng.integers(0, 100, (5, 6, 7)).astype(np.int16)
    path = write_nifti(tmp_path / "x.nii.gz", data, affine)
    array, dhw_affine, spacing = load_nifti_canonical(path)
    # every raw voxel lands where the new affine puts its world position
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij"), -1).reshape(
        -1, 3
    )
    world = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    dhw = np.rint(np.linalg.solve(dhw_affine[:3, :3], (world - dhw_affine[:3, 3]).T).T).astype(int)
    np.testing.assert_array_equal(array[tuple(dhw.T)], data[tuple(ijk.T)])
    # canonical: increasing d, h, w point towards S, A, R respectively
    directions = dhw_affine[:3, :3] / spacing
    assert directions[2, 0] > 0 and directions[1, 1] > 0 and directions[0, 2] > 0
    out = save_nifti_like(array, path, tmp_path / "back.nii.gz")
    back, back_affine = read_nifti(out)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)


def test_corrupt_and_missing(tmp_path) -> None:
    path = write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"x\.nii\.gz.*corrupt or truncated"):
        load_nifti_canonical(path)
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_nifti_canonical(tmp_path / "nope.nii.gz")
    with pytest.raises(ValueError, match="does not match"):
        good = write_nifti(tmp_path / "g.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
        save_nifti_like(np.zeros((3, 4, 4)), good, tmp_path / "o.nii.gz")


def test_sagittal_stack_becomes_axial_order(tmp_path) -> None:
    """Raw axes (i -> Posterior, j -> Inferior, k -> Right): by hand, d = Z-1-j (superior),
    h = X-1-i (anterior), w = k (right)."""
    affine = np.array([[0, 0, 1.0, 0], [-2.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_nifti(tmp_path / "sag.nii.gz", data, affine)
    array, _, spacing = load_nifti_canonical(path)
    expected = data[::-1, ::-1, :].transpose(1, 0, 2)  # (j, i, k) order with i, j flipped
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(spacing, [3.0, 2.0, 1.0])
