"""Lightning tasks: pretraining, and fine-tuning in the style of ``torchgeo.tasks``."""

from geodino.tasks.classification import Classification
from geodino.tasks.dinov2 import DINOv2Task
from geodino.tasks.segmentation import Segmentation

__all__ = ["Classification", "DINOv2Task", "Segmentation"]
