"""``python -m lightning_app {fit,validate,test,predict} --config ... [--debug]`` (see
lightning_app.cli; a bad argument or an unwritable file is one line, lightning_app.errors)."""

import sys

from lightning_app import early_signals

early_signals.hold()  # before the slow imports: a SLURM requeue signal must not end the run

from lightning_app.cli import main  # noqa: E402
from lightning_app.errors import run_reporting_errors  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
