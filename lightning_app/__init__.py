"""lightning_app: the template's Lightning CLI, callbacks and W&B wiring (no maths).

Run ``python -m lightning_app fit --config configs/base.yaml --config configs/data/phantom.yaml
--config configs/loss/ce_topk_dice.yaml`` (``make train``). This package is the repository's own
``lightning_app`` (not the retired PyPI package of the same import name).
"""

#: Marker that tests use to make sure the imported ``lightning_app`` is this repository's.
TEMPLATE_PACKAGE = "topk-dice-template"

__all__ = ["TEMPLATE_PACKAGE"]
