"""Band names: one canonical spelling, shared by the data sources and the weight loaders."""

import re

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
