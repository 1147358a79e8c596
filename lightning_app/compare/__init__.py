"""``python -m lightning_app.compare {losses,sweep-k}`` (``make compare``, ``make sweep-k``).

Every (row, seed[, fold]) run is the template's own CLI in a subprocess (``fit``, then ``test`` of
``last.ckpt``) with ``configs/base.yaml``, ``data/<dataset>.yaml``, the loss config, and where
they exist ``experiment/<dataset>.yaml`` (the recipe) and ``experiment/compare_<dataset>.yaml``
(the comparison protocol); ``ARGS`` come last and win. Modules: ``plan`` (what to run; run
names ``compare-<loss>-seed<seed>[-fold<k>]-<hash>``, the hash over the dataset, the parsed yaml contents,
the overrides and the test checkpoint), ``runs`` (one run's state on disk and its resume),
``launchers`` and ``slurm`` (how to run it), ``job`` (what a launched job runs), ``report``
(tables, plots, W&B), ``command`` (the command line).

With ``--folds`` (nnU-Net datasets) each fold tests the cases it held out, and a seed's folds
together form its case set. An interrupted comparison resumes by running the same command again; runs that differ only in
seeds or losses are shared between comparisons. All runs of one comparison share the W&B group
``compare-<dataset>-<hash>``, written into a logger overlay yaml
(``<out>/runs/<group>.logger.yaml``). Outputs go to ``<out>`` (default ``results/<dataset>``).

Modules for the report: ``per_case`` (reading ``<name>_per_case.csv``), ``statistics`` and
``power`` (case-level tests, intervals, ranks, planning), ``analysis`` / ``markdown`` /
``columns`` / ``plots`` (``<name>.md``, ``<name>.csv``, the figures). Everything in the report
is computed from the per-case CSV alone: ``python -m lightning_app.compare analyze --per-case``.
"""

from lightning_app.compare.command import build_parser, main
from lightning_app.compare.launchers import LocalPool, run_comparison
from lightning_app.compare.plan import (
    DEFAULT_K,
    FIT_DONE,
    PER_CASE_FILE,
    Comparison,
    Entry,
    RunSpec,
    default_seeds,
    loss_entries,
    sweep_k_entries,
)
from lightning_app.compare.report import write_outputs
from lightning_app.compare.runs import find_per_case_csv, run_state

__all__ = [
    "DEFAULT_K",
    "FIT_DONE",
    "LocalPool",
    "PER_CASE_FILE",
    "Comparison",
    "Entry",
    "RunSpec",
    "build_parser",
    "default_seeds",
    "find_per_case_csv",
    "loss_entries",
    "main",
    "run_comparison",
    "run_state",
    "sweep_k_entries",
    "write_outputs",
]
