"""On-device transforms: band statistics, multi-crop and iBOT masking."""

from typing import Any

from geodino.transforms.masking import MaskingGenerator, sample_ibot_masks
from geodino.transforms.multicrop import MultiCrop

__all__ = ["BandStatistics", "MaskingGenerator", "MultiCrop", "Normalize", "sample_ibot_masks"]

_LAZY = {
    "BandStatistics": "geodino.transforms.normalize",
    "Normalize": "geodino.transforms.normalize",
}


def __getattr__(name: str) -> Any:
    """Band statistics and normalisation, imported on first use.

    Args:
        name: attribute asked for.

    Returns:
        the attribute.

    Raises:
        AttributeError: if the package has no such attribute.
    """
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
