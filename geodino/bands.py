"""Band names: one canonical spelling, shared by the data sources and the weight loaders."""

import re
from collections.abc import Mapping, Sequence

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


# --- band identities: what a wavelength-aware backbone is told about each band -----------
#: Panopticon's ids of SAR polarisations (transmit/receive, any orbit direction): negative,
#: so that they never meet an optical wavelength.
SAR_POLARISATIONS: dict[str, float] = {"VV": -1.0, "VH": -2.0, "HH": -3.0, "HV": -4.0}

#: Landsat 8 and 9 OLI/TIRS band centres (nm): the two carry the same instruments' bands.
_LANDSAT_8_9: dict[str, float] = {
    "B1": 443.0,
    "B2": 482.0,
    "B3": 561.4,
    "B4": 654.6,
    "B5": 864.7,
    "B6": 1608.9,
    "B7": 2200.7,
    "B8": 589.5,
    "B9": 1373.4,
    "B10": 10895.0,
    "B11": 12005.0,
}

#: Centre wavelengths in nm of the bands of common sensors, under their usual band names
#: (matched case-insensitively; Sentinel-2 names also as ``B2``/``B8a``, Landsat ones also
#: as ``SR_B2``). Sentinel-1 bands are its polarisations.
SENSOR_BANDS: dict[str, dict[str, float]] = {
    "sentinel2": {
        "B01": 442.7,
        "B02": 492.4,
        "B03": 559.8,
        "B04": 664.6,
        "B05": 704.1,
        "B06": 740.5,
        "B07": 782.8,
        "B08": 832.8,
        "B8A": 864.7,
        "B09": 945.1,
        "B10": 1373.5,
        "B11": 1613.7,
        "B12": 2202.4,
    },
    "sentinel1": dict(SAR_POLARISATIONS),
    "landsat8": dict(_LANDSAT_8_9),
    "landsat9": dict(_LANDSAT_8_9),
    # PlanetScope SuperDove (PSB.SD), 8 bands
    "superdove": {
        "coastal_blue": 443.0,
        "blue": 490.0,
        "green_i": 531.0,
        "green": 565.0,
        "yellow": 610.0,
        "red": 665.0,
        "rededge": 705.0,
        "nir": 865.0,
    },
    # PlanetScope Dove-R / 4-band analytic products
    "planetscope4": {"blue": 490.0, "green": 565.0, "red": 665.0, "nir": 865.0},
    # WorldView-3 multispectral, 8 bands (WorldView-2's lie within a few nm)
    "worldview3": {
        "coastal": 427.0,
        "blue": 482.0,
        "green": 547.0,
        "yellow": 604.0,
        "red": 660.0,
        "red_edge": 722.0,
        "nir1": 833.0,
        "nir2": 949.0,
    },
}

#: Optical bands of different sensors closer than this (nm) are one spectral position: the
#: same band seen by two sensors (Sentinel-2 B03 at 560 nm, WorldView-3 green at 547, Landsat
#: 8 green at 561) sits within 20 nm, and the bands of one sensor lie at least ~30 nm apart.
SAME_BAND_NM = 20.0

_LANDSAT_NUMBERED = re.compile(r"(?:SR_|ST_)B(\d{1,2})")


def _band_keys(name: str) -> tuple[str, ...]:
    """The spellings under which a band name may appear in :data:`SENSOR_BANDS`."""
    plain = re.sub(r"[\s-]+", "_", name.strip())
    upper = plain.upper()
    landsat = _LANDSAT_NUMBERED.fullmatch(upper)
    keys = [plain.lower(), upper, canonical_s2_band(plain)]
    if landsat:
        keys.append(f"B{int(landsat.group(1))}")
    return tuple(dict.fromkeys(keys))


def _lookup(table: dict[str, float], name: str) -> float | None:
    folded = {key.upper(): value for key, value in table.items()}
    for key in _band_keys(name):
        if key.upper() in folded:
            return folded[key.upper()]
    return None


def band_identities(
    band_names: Sequence[str],
    sensor: str | Sequence[str] | None = None,
    extra: Mapping[str, float] | None = None,
    source: str = "the data",
) -> list[float]:
    """The identity of each band: its centre wavelength in nm, or a SAR polarisation's id.

    A name is looked up in ``extra`` first, then in the tables of :data:`SENSOR_BANDS` that
    ``sensor`` names (the first that has it wins, so ``[sentinel2, worldview3]`` reads
    ``B11`` as Sentinel-2's SWIR band); without a sensor, a name resolves when it means one
    identity in every table that has it, and one that means different bands in different
    sensors (``B8``: Landsat panchromatic, Sentinel-2 NIR) is refused.

    Args:
        band_names: names of the bands, in channel order.
        sensor: a key of :data:`SENSOR_BANDS`, several in order of preference, or None.
        extra: more ``{band name: wavelength in nm}`` (e.g. from a config), before the tables.
        source: what the bands belong to, for messages.

    Returns:
        one identity per band.

    Raises:
        ValueError: for an unknown sensor, an unknown band or an ambiguous one.
    """
    sensors = [sensor] if isinstance(sensor, str) else list(sensor or ())
    unknown = [s for s in sensors if s not in SENSOR_BANDS]
    if unknown:
        raise ValueError(
            f"sensor {unknown[0]!r} of {source} is unknown; choose among {sorted(SENSOR_BANDS)} "
            "or give the bands' wavelengths (band_wavelengths: {name: nm})."
        )
    folded = {key.strip().upper(): float(value) for key, value in (extra or {}).items()}
    out = []
    for name in band_names:
        if name.strip().upper() in folded:
            out.append(folded[name.strip().upper()])
            continue
        candidates = {
            key: value
            for key in sensors or sorted(SENSOR_BANDS)
            if (value := _lookup(SENSOR_BANDS[key], name)) is not None
        }
        values = list(dict.fromkeys(candidates.values()))
        if values and (sensors or len(values) == 1):
            out.append(values[0])
            continue
        if not values:
            where = f"the tables of {sensors}" if sensors else "any sensor's table"
            raise ValueError(
                f"band {name!r} of {source} is not in {where}; give the source's sensor (one "
                f"of {sorted(SENSOR_BANDS)}) or its centre wavelength in nm in the config "
                f"(band_wavelengths: {{{name}: 665.0}}; SAR polarisations: VV, VH, HH, HV)."
            )
        meanings = ", ".join(f"{key} {value:g} nm" for key, value in sorted(candidates.items()))
        raise ValueError(
            f"band {name!r} of {source} means different bands in different sensors "
            f"({meanings}); give the source's sensor or band_wavelengths: {{{name}: <nm>}}."
        )
    return out
