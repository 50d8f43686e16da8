"""What every file that the inference commands write records about how it was made."""

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from geodino import __version__

if TYPE_CHECKING:
    from geodino.export import PretrainedBackbone


def provenance(
    backbone: "PretrainedBackbone", weights: str | Path, chip_size: int
) -> dict[str, str]:
    """Metadata of an output: the backbone, its bands, geodino's version and the date.

    Args:
        backbone: the backbone that made the output.
        weights: the export folder or checkpoint it was read from.
        chip_size: the window side in pixels.

    Returns:
        ``geodino_version``, ``geodino_model`` (the timm architecture), ``geodino_weights``,
        ``bands`` (comma-separated, in channel order; empty if unknown), ``patch_size``,
        ``chip_size`` and ``date`` (UTC, ISO 8601, to the second), as text.
    """
    return {
        "geodino_version": __version__,
        "geodino_model": str(backbone.meta.get("model", "")),
        "geodino_weights": str(weights),
        "bands": ",".join(backbone.band_names),
        "patch_size": str(backbone.patch_size),
        "chip_size": str(chip_size),
        "date": now(),
    }


def describe(metadata: Mapping[str, str]) -> str:
    """The provenance as one line for a layer's description (QGIS shows it as its abstract).

    Args:
        metadata: what :func:`provenance` returns (keys it lacks are left out).

    Returns:
        e.g. ``geodino 0.1.0, model vit_small_patch14_reg4_dinov2, bands B02,B03,B04,B08,
        chips of 224 px, written 2026-01-31T12:00:00+00:00``.
    """
    parts = {
        "geodino_version": "geodino {}",
        "geodino_model": "model {}",
        "bands": "bands {}",
        "chip_size": "chips of {} px",
        "date": "written {}",
    }
    return ", ".join(text.format(metadata[k]) for k, text in parts.items() if metadata.get(k))


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
