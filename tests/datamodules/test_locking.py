"""Concurrent ``prepare_data`` on one new ``data_dir``: both processes succeed (issue 10).

Without the lock two processes racing on the same folder crash (measured: ``FileNotFoundError``
on the ``train.h5.tmp -> train.h5`` rename, or h5py's ``BlockingIOError: unable to lock file``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from datamodules.locking import data_dir_lock, lock_path
from tests.conftest import REPO

# Each process announces itself, waits for the common start signal, then prepares.
_PREPARE = """
import sys, time
from pathlib import Path
from datamodules.phantom import PhantomDataModule
data_dir, ready, go = map(Path, sys.argv[1:4])
dm = PhantomDataModule(data_dir=str(data_dir), num_train=6, num_val=2, num_test=2,
                       volume_shape=(16, 96, 96), progress=False)
ready.touch()
while not go.exists():
    time.sleep(0.005)
dm.prepare_data()
dm.setup("fit")
print("ok", len(dm.train_set))
"""


def test_two_processes_prepare_one_new_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "phantom"
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PREPARE, str(data_dir), str(ready), str(go)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "the preparing processes did not start"
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert "ok" in out.splitlines()[-1], out
    fingerprints = set()
    for split in ("train", "val", "test"):
        with h5py.File(data_dir / f"{split}.h5", "r") as f:
            fingerprints.add(f.attrs["fingerprint"])
            assert len(f.keys()) == {"train": 6, "val": 2, "test": 2}[split]
    assert len(fingerprints) == 1
    assert not list(data_dir.glob("*.tmp"))
    assert lock_path(data_dir) == tmp_path / "phantom.lock"


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    """While one process holds the lock, another cannot take it (filelock over flock)."""
    probe = (
        "import sys\nfrom filelock import FileLock, Timeout\n"
        "try:\n    FileLock(sys.argv[1]).acquire(timeout=0.2)\n    print('acquired')\n"
        "except Timeout:\n    print('busy')\n"
    )
    with data_dir_lock(tmp_path / "d") as path:
        busy = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
        assert busy.stdout.decode().strip() == "busy"
    free = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
    assert free.stdout.decode().strip() == "acquired"


@pytest.mark.parametrize("name", ["phantom", "phantom-compare"])
def test_lock_path_is_a_sibling(tmp_path: Path, name: str) -> None:
    assert lock_path(tmp_path / name) == tmp_path / f"{name}.lock"
