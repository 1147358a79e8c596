"""``python -m lightning_app.compare``: train and test every loss x seed, then tabulate them.

Two modes (``make compare`` and ``make sweep-k``)::

    python -m lightning_app.compare losses  --dataset phantom [--seeds 3]
        [--losses ce ce_dice focal_dice topk_ce_dice ce_topk_dice] [-- <Lightning CLI overrides>]
    python -m lightning_app.compare sweep-k --dataset phantom --k 5 10 20 50 100 [-- <overrides>]

Every run is the template's own CLI in a subprocess, with identical settings apart from the
loss (or K) and the seed::

    python -m lightning_app fit  --config configs/base.yaml --config configs/data/<dataset>.yaml
        --config configs/loss/<loss>.yaml [--config configs/compare/<dataset>.yaml]
        [--config <out>/runs/<group>.logger.yaml] --seed_everything=<seed>
        --trainer.default_root_dir=<out>/runs/<run name> [K override] <overrides>
    python -m lightning_app test <the same arguments> --ckpt_path=<run>/checkpoints/last.ckpt

``configs/compare/<dataset>.yaml`` (when present) holds the comparison's own defaults for the
dataset (epochs). ``<overrides>`` (``make ... ARGS=...``) come last and win.

Run names are deterministic, ``compare-<loss>-seed<seed>-<hash>`` and
``sweepk-k<K>-seed<seed>-<hash>``; the 8-hex hash covers everything that defines the run
besides the loss/K and seed: the dataset, the parsed contents of the yaml files above (comments
and formatting do not count), the overrides and the test checkpoint. Changing ``ARGS`` therefore
starts a new set of runs instead of mixing settings, while comparisons that differ only in
their seeds or losses share their common runs (``SEEDS=1`` then ``SEEDS=3`` adds two seeds). The runs live in ``<out>/runs/<run name>/``
(a normal run directory: config.yaml, checkpoints/, csv/, wandb/, per_case.csv, summary.md) with
the subprocess output in ``<run name>/compare.log``.

Resume: a run whose ``per_case.csv`` exists is finished and skipped; a run whose fit completed
(marker ``compare-fit.done``) is only tested; a run with ``checkpoints/last.ckpt`` but no marker
continues with ``fit --ckpt_path=<last.ckpt>``; a run directory that holds a config but no
checkpoint (a fit that died in its first epoch) is renamed ``<name>.stale-<time>`` and started
again. So an interrupted ``make compare`` is resumed by running the same command again.

All runs of one comparison share the W&B group ``compare-<dataset>-<hash>`` (``sweepk-...`` for
a sweep; project ``topk-dice-<dataset>``, set by the CLI): the group is written into the W&B
logger entry of a small logger overlay yaml (``<out>/runs/<group>.logger.yaml``), since a
single field of a list entry cannot be overridden on the command line. The table and the plots
are then logged by a W&B run of their own (same project and group, job type ``comparison``;
offline without credentials, nothing with ``WANDB_MODE=disabled``).

Launchers (``--launcher``, ``make compare LAUNCHER=...``): ``inprocess`` (default, one run after
another), ``local`` (``--jobs`` runs at once on this machine, one per GPU, ``--runs-per-gpu``;
:class:`~lightning_app.compare.launchers.LocalPool`) and ``slurm`` (one ``sbatch`` job per run,
``--sbatch``, ``--no-wait``; :mod:`lightning_app.compare.slurm`). The package's modules:
``plan`` (what to run), ``runs`` (one run's state and steps), ``launchers`` and ``slurm`` (how
to run it), ``job`` (what a launched job runs), ``report`` (per-case CSV, curves, W&B),
``analysis`` / ``markdown`` / ``columns`` / ``plots`` (the report of a per-case CSV),
``per_case`` (reading), ``statistics`` and ``power`` (the tests and planning), ``command``.

Outputs in ``<out>`` (default ``results/<dataset>``), ``<name>`` = ``comparison`` or ``sweep_k``:

- ``<name>_per_case.csv``: every run's per-case rows (loss, key, seed, run, case, class, dice,
  iou, precision, recall, hd95, gt_empty, pred_empty; fractions); everything below is computed
  from it alone (``python -m lightning_app.compare analyze --per-case <it>``);
- ``<name>.md``: each row's mDice with its 95% CI, its difference to the reference (CE +
  topK-Dice by default; row minus reference) with CI, p, Holm, an exact Wilcoxon check,
  probability of improvement and rank-1 probability (:mod:`lightning_app.compare.statistics`),
  the empty-cell counts, the poster's columns (mean ± std over seeds) and the plots;
- ``<name>.csv``: the same, machine-readable (docs/comparison.md lists the columns);
- ``<name>_differences.png``, ``<name>_ranks.png``, ``<name>_per_class_dice.png``,
  ``<name>_val_dice.png`` and, for the sweep, ``sweep_k_mdice_vs_k.png``.
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
