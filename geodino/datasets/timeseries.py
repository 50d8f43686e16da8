"""Time series of acquisitions per location: one chip per acquisition date, on one grid."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import torch
from torchgeo.datasets import GeoDataset, RasterDataset

from geodino.datasets.geotiff import MultiBandGeoTIFF
from geodino.datasets.protocols import Multimodal, NamedBands, band_kinds_of, nodata_of
from geodino.errors import ConfigError, DataError

Sample = dict[str, Any]


class TimeSeries(GeoDataset):
    """The acquisitions of a dated raster dataset at each location, stacked over time.

    For a TorchGeo ``(x, y, t)`` query, every acquisition date of ``dataset`` whose files
    overlap the chip and whose time span overlaps ``t`` is read through ``dataset`` itself
    (one query per date, so same-day tiles are mosaicked, warped and band-selected as for a
    single-date chip) onto the query's grid, in date order. Dates come from the dataset's
    index, i.e. a ``filename_regex`` with a ``date`` group and its ``date_format``.

    TorchGeo's ``RasterDataset(time_series=True)`` stacks the matching files but does not
    return their dates, and stacks same-day tiles as separate steps; this reads per date.

    A sample holds ``image`` (T, C, H, W) float32 with the dataset's nodata as NaN, ``doy``
    (T,) int64 day of year (1-366) of each acquisition, 0 for padding, and the query's
    ``bounds``/``transform``. With ``length`` set, every sample has exactly ``length`` steps:
    shorter series are padded with NaN images and ``doy`` 0 (what
    :class:`~geodino.models.FusionViT` reads as a missing acquisition), longer ones keep
    ``length`` dates evenly spread over the series; samples then collate into batches.

    Args:
        dataset: a TorchGeo raster dataset that indexes acquisition dates (e.g. a
            :class:`~geodino.datasets.MultiBandGeoTIFF` subclass with ``filename_regex`` and
            ``date_format``).
        length: steps per sample (None: as many as the query finds).
        transforms: applied to each sample.
        modality: name of the series' bands as one modality (the key of its patch
            embedding in :class:`~geodino.models.FusionViT`, e.g. ``s2``); a multimodal
            dataset (a :class:`~geodino.datasets.PairedDataset`) keeps its own modalities.

    Raises:
        ConfigError: if ``length`` is not >= 1.
        DataError: if the dataset's files carry no dates.
    """

    #: what the data modules and :func:`~geodino.datasets.protocols.is_time_series` read
    time_series = True

    def __init__(
        self,
        dataset: GeoDataset,
        length: int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        modality: str = "image",
    ) -> None:
        """Check the dataset's dates and share its index."""
        if length is not None and (isinstance(length, bool) or length < 1):
            raise ConfigError(
                f"TimeSeries length={length} must be a whole number >= 1 (or "
                "null for as many steps as the query finds)."
            )
        if not modality.isidentifier():
            raise ConfigError(
                f"TimeSeries modality={modality!r} must be an identifier such as 's2' (it "
                "names the modality's patch embedding)."
            )
        times = dataset.index.index
        if (times.left == pd.Timestamp.min).any() or (times.right == pd.Timestamp.max).any():
            undated = list(dataset.index.get("filepath", dataset.index.geometry))[:3]
            raise DataError(
                f"{type(dataset).__name__} has files without acquisition dates (e.g. "
                f"{undated}); a time series needs a filename_regex with a (?P<date>...) group "
                "and a date_format matching the file names."
            )
        self.dataset = dataset
        self.length = length
        self.modality = modality
        self.transforms = transforms
        self.index = dataset.index
        self._res = dataset.res

    @property
    def band_names(self) -> list[str]:
        """Names of the bands of each step, in channel order."""
        if isinstance(self.dataset, NamedBands) and self.dataset.band_names:
            return list(self.dataset.band_names)
        return list(self.dataset.bands) if isinstance(self.dataset, RasterDataset) else []

    @property
    def band_kinds(self) -> list[str]:
        """``optical`` or ``sar`` per band of each step, the dataset's."""
        return band_kinds_of(self.dataset, len(self.band_names))

    @property
    def band_groups(self) -> dict[str, int]:
        """Band count of each modality: the dataset's, else all bands as ``modality``."""
        if isinstance(self.dataset, Multimodal):
            return dict(self.dataset.band_groups)
        return {self.modality: len(self.band_names)}

    @property
    def nodata(self) -> float:
        """NaN: the dataset's nodata value becomes NaN, padding steps are all NaN."""
        return float("nan")

    def dates(self, query: Any) -> list[pd.Interval]:
        """Acquisition time spans found for a query, in date order.

        Args:
            query: a TorchGeo (x, y, t) slice query.

        Returns:
            one interval per distinct acquisition, after ``length`` thinning.
        """
        x, y, t = self._disambiguate_slice(query)
        index = self.index
        index = index.iloc[index.index.overlaps(pd.Interval(t.start, t.stop, closed="both"))]
        index = index.cx[x.start : x.stop, y.start : y.stop]
        spans = sorted(set(index.index), key=lambda i: (i.left, i.right))
        if self.length is not None and len(spans) > self.length:
            keep = np.linspace(0, len(spans) - 1, self.length).round().astype(int)
            spans = [spans[i] for i in keep]
        return spans

    def __getitem__(self, query: Any) -> Sample:
        """Read every acquisition at the query's chip.

        Args:
            query: a TorchGeo (x, y, t) slice query.

        Returns:
            the sample: ``image`` (T, C, H, W), ``doy`` (T,), ``bounds``, ``transform``.

        Raises:
            DataError: if no acquisition overlaps the query.
        """
        x, y, t = self._disambiguate_slice(query)
        spans = self.dates(query)
        if not spans:
            raise DataError(
                f"no acquisition of {type(self.dataset).__name__} overlaps the "
                f"query {query}; query inside the dataset's bounds {self.bounds}."
            )
        nodata = nodata_of(self.dataset)
        images, doys, sample = [], [], {}
        for span in spans:
            part = self.dataset[(x, y, slice(span.left, span.right, t.step))]
            image = part["image"].float()
            if nodata is not None and not np.isnan(nodata):
                image = torch.where(image == nodata, torch.nan, image)
            images.append(image)
            # the middle of the acquisition's span: a date parsed to one day spans that day
            middle = span.left + (span.right - span.left) / 2
            doys.append(middle.day_of_year)
            sample = {k: v for k, v in part.items() if k != "image"}
        if self.length is not None and len(images) < self.length:
            pad = self.length - len(images)
            images += [torch.full_like(images[0], torch.nan)] * pad
            doys += [0] * pad
        sample["image"] = torch.stack(images)
        sample["doy"] = torch.tensor(doys, dtype=torch.int64)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class DatedGeoTIFF(MultiBandGeoTIFF):
    """GeoTIFFs whose file names carry their acquisition dates, given at run time.

    A :class:`~geodino.datasets.MultiBandGeoTIFF` whose ``filename_regex`` and
    ``date_format`` are arguments instead of class attributes, for tools that take them from
    the command line (``geodino knn --date_regex``).

    Args:
        paths: files or folders.
        filename_regex: regex of the file names with a ``(?P<date>...)`` group.
        date_format: ``strptime`` format of the date group.
        **kwargs: passed to :class:`~geodino.datasets.MultiBandGeoTIFF`.

    Raises:
        ConfigError: if the regex has no ``date`` group.
    """

    def __init__(
        self, paths: Any, filename_regex: str, date_format: str = "%Y%m%d", **kwargs: Any
    ) -> None:
        """Set the dated naming, then index the files."""
        if "(?P<date>" not in filename_regex:
            raise ConfigError(
                f"filename_regex {filename_regex!r} has no (?P<date>...) group; e.g. "
                r"'^S2_(?P<date>\d{8})' with date_format '%Y%m%d'."
            )
        # TorchGeo reads both while indexing the files
        self.filename_regex = filename_regex
        self.date_format = date_format
        super().__init__(paths, **kwargs)


__all__ = ["DatedGeoTIFF", "TimeSeries"]
