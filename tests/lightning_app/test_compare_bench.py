"""``make bench`` (scripts/bench_all.py): runs every bench script and writes one report.

Uses two tiny stand-in scripts in tmp_path (one fails), never the real, slow benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

BENCH_ALL = REPO / "scripts" / "bench_all.py"


def run_bench_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH_ALL), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "bench_alpha.py").write_text("print('alpha: 1.23 ms vs reference 2.46 ms (0.50x)')\n")
    (d / "bench_beta.py").write_text("import sys\nprint('beta starts')\nsys.exit(3)\n")
    (d / "bench_all.py").write_text("raise SystemExit('must not run itself')\n")
    return d


def test_report_holds_every_script_machine_and_versions(scripts: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "bench.md"
    proc = run_bench_all("--scripts-dir", str(scripts), "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # beta failed
    report = out.read_text()
    assert "## bench-alpha" in report and "alpha: 1.23 ms vs reference 2.46 ms" in report
    assert "## bench-beta" in report and "beta starts" in report
    assert "| bench-alpha | ok |" in report and "| bench-beta | FAILED (exit 3) |" in report
    assert "bench-all" not in report
    assert f"torch {torch.__version__}" in report
    assert "- CPU: " in report and "- Date: " in report


def test_only_runs_the_named_scripts(scripts: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = run_bench_all("--scripts-dir", str(scripts), "--out", str(out), "--only", "alpha")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = out.read_text()
    assert "bench-alpha" in report and "bench-beta" not in report


def test_unknown_name_and_missing_folder_are_rejected(scripts: Path, tmp_path: Path) -> None:
    proc = run_bench_all("--scripts-dir", str(scripts), "--only", "gamma")
    assert proc.returncode != 0
    assert "ValueError: Expected benchmark names among ['alpha', 'beta']" in proc.stderr
    proc = run_bench_all("--scripts-dir", str(tmp_path / "none"))
    assert "FileNotFoundError: No scripts folder" in proc.stderr
