"""What every file that the inference commands write records about how it was made."""

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


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
