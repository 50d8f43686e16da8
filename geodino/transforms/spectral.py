"""Spectral multi-crop: each crop sees a subset of its bands (as Panopticon trains).

A wavelength-aware backbone (:class:`~geodino.models.SpectralViT`) takes a band mask beside
the images; hiding bands from each view teaches it to embed any subset of a sensor's bands
alike (RGB+NIR of a Sentinel-2 scene, Sentinel-2 without SWIR, one SAR polarisation). A
subset is either drawn at random or is what another sensor records of the scene: the bands
of the source at the spectral positions of a sensor of :data:`geodino.bands.SENSOR_BANDS`
(a Sentinel-2 crop as PlanetScope, Landsat or WorldView-3 would see it).
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from geodino.bands import SAME_BAND_NM, SENSOR_BANDS
from geodino.errors import ConfigError


def sensor_band_sets(identities: Sequence[float], min_bands: int = 1) -> list[list[int]]:
    """The subsets of a source's bands that the sensors of the band table record.

    For each sensor of :data:`~geodino.bands.SENSOR_BANDS`, each of its optical bands takes
    the source's band nearest in wavelength, if one lies within
    :data:`~geodino.bands.SAME_BAND_NM`. SAR polarisations take no part: a SAR source's
    subsets are the random ones.

    Args:
        identities: the source's band identities (nm, or negative SAR ids).
        min_bands: fewest bands a subset keeps.

    Returns:
        distinct sorted band indices, one list per sensor that records at least
        ``min_bands`` and fewer than all of the source's bands.
    """
    subsets: list[list[int]] = []
    for table in SENSOR_BANDS.values():
        kept: set[int] = set()
        for wavelength in table.values():
            near = [
                (abs(identity - wavelength), index)
                for index, identity in enumerate(identities)
                if identity > 0 and wavelength > 0 and abs(identity - wavelength) < SAME_BAND_NM
            ]
            if near:
                kept.add(min(near)[1])
        subset = sorted(kept)
        if min_bands <= len(subset) < len(identities) and subset not in subsets:
            subsets.append(subset)
    return subsets


def draw_band_masks(
    crops: int,
    bands: int,
    probability: float,
    min_bands: int = 1,
    generator: torch.Generator | None = None,
    sensors: Sequence[Sequence[int]] = (),
    sensor_share: float = 0.0,
) -> Tensor:
    """Which bands each crop hides: with ``probability``, all but a subset.

    A crop drawn for a subset keeps, with chance ``sensor_share``, one of ``sensors``
    (chosen uniformly); otherwise ``k`` bands, ``k`` uniform in ``min_bands..bands - 1``,
    chosen uniformly. The other crops keep all their bands.

    Args:
        crops: number of crops.
        bands: bands of each crop.
        probability: chance that a crop sees a subset.
        min_bands: fewest bands a random subset keeps.
        generator: CPU generator of the draws.
        sensors: band indices of the sensor subsets (:func:`sensor_band_sets`).
        sensor_share: chance that a subset is one of ``sensors`` (none: always random).

    Returns:
        (crops, bands) bool, True for a hidden band; no row hides every band.

    Raises:
        ConfigError: if ``probability`` or ``sensor_share`` is not in [0, 1] or
            ``min_bands`` not >= 1.
    """
    shares = (("spectral subset probability", probability), ("sensor share", sensor_share))
    for name, value in shares:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} {value} must lie in [0, 1].")
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
    if sensors and sensor_share > 0:
        sensor_hidden = torch.ones(len(sensors), bands, dtype=torch.bool)
        for row, kept in enumerate(sensors):
            sensor_hidden[row, list(kept)] = False
        use = (torch.rand(crops, generator=generator) < sensor_share) & subset
        pick = torch.randint(0, len(sensors), (crops,), generator=generator)
        hidden = torch.where(use.unsqueeze(1), sensor_hidden[pick], hidden)
    return hidden


__all__ = ["draw_band_masks", "sensor_band_sets"]
