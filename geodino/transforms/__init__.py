"""On-device transforms: band statistics, multi-crop and iBOT masking."""

from geodino.transforms.masking import MaskingGenerator, sample_ibot_masks
from geodino.transforms.multicrop import MultiCrop
from geodino.transforms.normalize import BandStatistics, Normalize

__all__ = ["BandStatistics", "MaskingGenerator", "MultiCrop", "Normalize", "sample_ibot_masks"]
