"""lightning_app: wires datamodules, models and losses into runs (no maths).

- ``cli``: the Lightning CLI (``python -m lightning_app fit|validate|test|predict``, ``make
  train``); ``run_dir``: run names and directories; ``checkpoints``: resume and save on SIGTERM.
- ``callbacks/``: progress bar, W&B panels, run summary, test report; ``loggers``: W&B logger;
  ``reports``: the test report's files.
- ``predict/``: ``python -m lightning_app.predict`` on new NIfTI volumes (``make predict``).
- ``compare/``: ``python -m lightning_app.compare`` (``make compare``, ``make sweep-k``).

This package is the repository's own ``lightning_app`` (not the retired PyPI package of the
same import name).
"""

import warnings

# timm (imported by segmentation_models_pytorch) decorates a class with torch.jit.interface,
# which recent torch releases deprecate: a warning at every command that no user can act on.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning
)

#: Marker that tests use to make sure the imported ``lightning_app`` is this repository's.
TEMPLATE_PACKAGE = "topk-dice-template"

__all__ = ["TEMPLATE_PACKAGE"]
