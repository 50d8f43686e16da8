"""geodino: DINOv2 self-supervised pretraining for Earth observation, built on TorchGeo."""

__version__ = "0.1.0"
