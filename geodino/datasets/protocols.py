"""What the data modules, samplers and fusion datasets ask of a data source.

A source is any TorchGeo or map-style dataset; these protocols name the optional members a
geodino source may have (a raw read, band names, band kinds, modalities, a nodata value, a
time series flag). They are checked structurally (``isinstance`` on a runtime-checkable
protocol), so a user's own dataset takes part by defining the member, without subclassing.
"""

from typing import Any, Protocol, runtime_checkable

import numpy as np

#: A sample as datasets return it: ``image`` (and ``mask``, ``bounds``, ...) by key.
Sample = dict[str, Any]

#: The kind of a band, which decides its photometric augmentations.
BAND_KINDS = ("optical", "sar")


@runtime_checkable
class NamedBands(Protocol):
    """A source that names its bands, in channel order."""

    @property
    def band_names(self) -> list[str]:
        """Names of the bands returned, in channel order."""
        ...


@runtime_checkable
class HasNodata(Protocol):
    """A source with a value marking missing pixels (NaN is always missing)."""

    @property
    def nodata(self) -> float | None:
        """Value marking missing data in returned images."""
        ...


@runtime_checkable
class RawSampleSource(Protocol):
    """A source that can read a sample in the files' own dtype, straight into a buffer."""

    def raw_sample(self, index: Any, out: np.ndarray | None = None) -> Sample:
        """The sample at ``index``; ``image.float()`` equals ``self[index]["image"]``.

        Args:
            index: the query.
            out: where the image may be read (e.g. its slot in a batch).

        Returns:
            the sample.
        """
        ...


@runtime_checkable
class OneBandKind(Protocol):
    """A source whose bands are all of one kind (``optical`` or ``sar``)."""

    band_kind: str


@runtime_checkable
class BandKinds(Protocol):
    """A source that gives the kind of each band (e.g. a multimodal stack)."""

    @property
    def band_kinds(self) -> list[str]:
        """``optical`` or ``sar`` per band, in channel order."""
        ...


@runtime_checkable
class Multimodal(Protocol):
    """A source whose bands are several modalities stacked in channel order."""

    @property
    def band_groups(self) -> dict[str, int]:
        """Band count of each modality, in channel order."""
        ...


@runtime_checkable
class Modalities(Protocol):
    """A source that reads several datasets (modalities) onto the grid of the first."""

    @property
    def modalities(self) -> dict[str, Any]:
        """The datasets by modality name, the grid-setting one first."""
        ...


@runtime_checkable
class MaybeTimeSeries(Protocol):
    """A source that says whether it stacks a time series per sample."""

    time_series: bool


def band_kinds_of(source: object, bands: int) -> list[str]:
    """The kind of each band of a source: its ``band_kinds``, else its ``band_kind``, else optical.

    Args:
        source: the dataset.
        bands: its number of bands.

    Returns:
        ``optical`` or ``sar`` per band.
    """
    if isinstance(source, BandKinds):
        return list(source.band_kinds)
    if isinstance(source, OneBandKind):
        return [source.band_kind] * bands
    return ["optical"] * bands


def nodata_of(source: object) -> float | None:
    """A source's nodata value, or None when it declares none.

    Args:
        source: the dataset.

    Returns:
        the nodata value.
    """
    return source.nodata if isinstance(source, HasNodata) else None


def is_time_series(source: object) -> bool:
    """Whether a source returns a time series per sample.

    Args:
        source: the dataset.

    Returns:
        True if it says so through ``time_series``.
    """
    return isinstance(source, MaybeTimeSeries) and bool(source.time_series)
