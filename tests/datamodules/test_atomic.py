"""Atomic writes: the final name holds the old file or the complete new one, never a part."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datamodules.atomic import WriteError, atomic_path, atomic_write_text
from datamodules.nifti import save_nifti_like


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "per_case.csv"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "per_case.csv"
    ]


def test_temporary_name_keeps_the_suffixes(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "case.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp.name[0] == "."
        tmp.write_bytes(b"x")
    assert (tmp_path / "case.nii.gz").read_bytes() == b"x"


def test_a_full_disk_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    with pytest.raises(WriteError) as info, atomic_path(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert info.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_prediction_onto_a_full_tmpfs_leaves_no_file(tmp_path: Path) -> None:
    """``make predict`` onto a full disk left a 0-byte ``phantom020.nii.gz``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    reference = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(reference))
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 64), dtype=np.uint8)
        nib.save(nib.Nifti1Image(noise, np.eye(4)), str(reference))
        with pytest.raises(WriteError, match=f"cannot write {mount / 'case.nii.gz'}"):
            save_nifti_like(noise, reference, mount / "case.nii.gz")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
