"""models: the segmentation LightningModule and its validation scores.

``from models import SegmentationModel, PooledDiceIoU``. Per-case test metrics
(``compute_case_metrics``) live in ``models.metrics``.
"""

from models.scores import PooledDiceIoU, dice_iou_from_confmat
from models.segmentation import SegmentationModel, metric_key

__all__ = ["SegmentationModel", "PooledDiceIoU", "dice_iou_from_confmat", "metric_key"]
