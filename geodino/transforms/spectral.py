"""Spectral multi-crop: each crop sees a random subset of its bands (as Panopticon trains).

A wavelength-aware backbone (:class:`~geodino.models.SpectralViT`) takes a band mask beside
the images; hiding random bands from each view teaches it to embed any subset of a sensor's
bands alike (RGB+NIR of a Sentinel-2 scene, Sentinel-2 without SWIR, one SAR polarisation).
"""

import torch
from torch import Tensor

from geodino.errors import ConfigError


def draw_band_masks(
    crops: int,
    bands: int,
    probability: float,
    min_bands: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which bands each crop hides: with ``probability``, all but a random subset.

    A crop drawn for a subset keeps ``k`` bands, ``k`` uniform in ``min_bands..bands - 1``,
    chosen uniformly; the others keep all their bands.

    Args:
        crops: number of crops.
        bands: bands of each crop.
        probability: chance that a crop sees a subset.
        min_bands: fewest bands a crop keeps.
        generator: CPU generator of the draws.

    Returns:
        (crops, bands) bool, True for a hidden band; no row hides every band.

    Raises:
        ConfigError: if ``probability`` is not in [0, 1] or ``min_bands`` not >= 1.
    """
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"spectral subset probability {probability} must lie in [0, 1].")
    if min_bands < 1:
        raise ConfigError(f"min_bands={min_bands}: every crop must keep at least one band.")
    hidden = torch.zeros(crops, bands, dtype=torch.bool)
    low = min(min_bands, bands)
    if bands <= low or probability == 0:
        return hidden
    subset = torch.rand(crops, generator=generator) < probability
    keep = torch.randint(low, bands, (crops,), generator=generator)
    order = torch.rand(crops, bands, generator=generator).argsort(dim=1)
    rank = order.argsort(dim=1)  # each band's place in the crop's random order
    hidden = (rank >= keep.unsqueeze(1)) & subset.unsqueeze(1)
    return hidden


__all__ = ["draw_band_masks"]
