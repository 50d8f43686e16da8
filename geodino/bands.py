"""Band names: one canonical spelling, shared by the data sources and the weight loaders."""

import re
from collections.abc import Sequence

_S2_NUMBERED = re.compile(r"B0?(\d{1,2})")


def canonical_s2_band(name: str) -> str:
    """``B2``, ``b02`` or ``B02`` -> ``B02``; ``B8a`` -> ``B8A``.

    Args:
        name: a band name.

    Returns:
        the canonical name, or the input upper-cased if it is no Sentinel-2 band.
    """
    upper = name.strip().upper()
    match = _S2_NUMBERED.fullmatch(upper)
    return f"B{int(match.group(1)):02d}" if match else upper


#: What GDAL and tools built on it write when a band has no name: ``Band 1`` ... ``Band N``.
_GDAL_DEFAULT = re.compile(r"band[ _-]?\d+", re.IGNORECASE)


def described_band_names(descriptions: Sequence[str | None]) -> list[str] | None:
    """The band names a raster's descriptions give, or None when they name nothing.

    Descriptions name the bands only when every band has one, they are distinct, and none is
    GDAL's stand-in ``Band <i>`` (which files converted by GDAL carry for unnamed bands).

    Args:
        descriptions: one description per band (``rasterio``'s ``src.descriptions``).

    Returns:
        the stripped names, or None.
    """
    names = [d.strip() if d else "" for d in descriptions]
    if not names or not all(names) or len(set(names)) != len(names):
        return None
    if any(_GDAL_DEFAULT.fullmatch(name) for name in names):
        return None
    return names
