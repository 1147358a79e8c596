"""Run every benchmark script (``scripts/bench_*.py``, i.e. every ``make bench-*`` target) and
write one report, ``results/bench.md`` (``make bench``).

Each script runs in its own process (``python scripts/bench_<name>.py``, no arguments, as its
``make bench-<name>`` target runs it), one after the other so they do not compete for the CPU;
the report holds the machine (CPU model, cores, memory, GPUs), the date, the Python / torch /
Lightning / MONAI versions and, per script, its exit status, wall time and full output (each
script prints its own figures next to a reference measured in the same run). The exit status
is non-zero if any script failed; the report is written either way.

Options: ``--only losses eval`` (a subset, by name), ``--out PATH``, ``--timeout SECONDS`` (per
script), ``--scripts-dir DIR``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_PACKAGES = ("torch", "lightning", "segmentation-models-pytorch", "monai", "numpy", "scipy")


def discover(scripts_dir: Path, only: list[str] | None = None) -> list[tuple[str, Path]]:
    """``[(name, path)]`` of ``bench_<name>.py`` in ``scripts_dir`` (this script excluded),
    sorted by name, restricted to ``only`` when given.

    Raises:
        FileNotFoundError: ``scripts_dir`` is missing.
        ValueError: a name in ``only`` has no script.
    """
    if not scripts_dir.is_dir():
        raise FileNotFoundError(f"No scripts folder {scripts_dir} (expected bench_<name>.py files)")
    found = {
        p.stem.removeprefix("bench_"): p
        for p in sorted(scripts_dir.glob("bench_*.py"))
        if p.name != Path(__file__).name
    }
    if only:
        missing = sorted(set(only) - set(found))
        if missing:
            raise ValueError(
                f"Expected benchmark names among {sorted(found)}, but got unknown {missing}"
            )
        return [(name, found[name]) for name in sorted(set(only))]
    return sorted(found.items())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _version(package: str) -> str:
    if package == "torch":  # the build tag (+cu130, +cpu) matters for timings
        try:
            import torch

            return str(torch.__version__)
        except ImportError:
            return "not installed"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return ", ".join(names)
    except Exception as err:  # noqa: BLE001 - a report line, never a failure
        return f"unknown ({type(err).__name__})"
    return "none"


def machine_lines() -> list[str]:
    """Markdown bullet lines describing the machine and the software versions."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    lines = [
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- Host: {platform.node()} ({platform.platform()})",
        f"- CPU: {_cpu_model()}, {cores} logical cores ({usable} usable by this process)",
        f"- Memory: {_memory_gib()}",
        f"- GPUs: {_gpus()}",
        f"- Python {platform.python_version()}; "
        + ", ".join(f"{p} {_version(p)}" for p in _PACKAGES),
    ]
    try:
        load = os.getloadavg()
        lines.append(
            f"- Load average at start (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
    except OSError:
        pass
    return lines


def run_script(path: Path, timeout: float | None) -> tuple[int, float, str]:
    """``(exit status, seconds, stdout + stderr)`` of ``python <path>`` (124 on timeout)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd=path.parent.parent,
        )
        code, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout
        code, output = 124, (out or "") + f"\n[timed out after {timeout:g} s]\n"
    return code, time.perf_counter() - start, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names (bench_<name>)")
    parser.add_argument("--out", type=Path, default=Path("results/bench.md"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script")
    parser.add_argument("--scripts-dir", type=Path, default=_HERE)
    opts = parser.parse_args(argv)
    scripts = discover(opts.scripts_dir, opts.only)
    sections, summary = [], []
    header = machine_lines()
    for name, path in scripts:
        print(f"== bench-{name} ({path.name}) ...", flush=True)
        code, seconds, output = run_script(path, opts.timeout)
        print(output, end="" if output.endswith("\n") else "\n", flush=True)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        summary.append(f"| bench-{name} | {status} | {seconds:.1f} |")
        sections += [
            f"## bench-{name}",
            "",
            f"`python scripts/{path.name}`: {status}, {seconds:.1f} s",
            "",
            "```text",
            output.rstrip("\n"),
            "```",
            "",
        ]
    report = [
        "# Benchmarks (`make bench`)",
        "",
        *header,
        "",
        "| target | status | wall time (s) |",
        "|---|---|--:|",
        *summary,
        "",
        *sections,
    ]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(report))
    failed = [line for line in summary if "FAILED" in line]
    print(f"report: {opts.out}" + (f" ({len(failed)} failed)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
