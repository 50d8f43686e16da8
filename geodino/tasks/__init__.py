"""Lightning tasks: pretraining (and, later, fine-tuning) in the style of ``torchgeo.tasks``."""

from geodino.tasks.dinov2 import DINOv2Task

__all__ = ["DINOv2Task"]
