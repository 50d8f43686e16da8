"""Co-located chips of several modalities (e.g. Sentinel-1 and Sentinel-2) on one pixel grid."""

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import torch
from torchgeo.datasets import GeoDataset, IntersectionDataset

from geodino.datasets.protocols import NamedBands, band_kinds_of, is_time_series, nodata_of
from geodino.datasets.timeseries import TimeSeries
from geodino.errors import DataError

log = logging.getLogger(__name__)

Sample = dict[str, Any]


class PairedDataset(IntersectionDataset):
    """The spatial intersection of one dataset per modality, bands stacked in declared order.

    A TorchGeo :class:`~torchgeo.datasets.IntersectionDataset` of the modalities' datasets:
    chips are drawn only where every modality has data, and every modality is read for the
    same query, warped onto the first modality's CRS and resolution, so the chips of one
    sample are pixel-aligned (list the finest modality first, e.g. Sentinel-2 at 10 m).

    A sample holds one ``image`` with the modalities' bands stacked in the order of
    ``datasets`` (``band_groups`` gives each modality's band count, ``band_kinds`` each band's
    kind for the augmentations). Each modality's own nodata value (e.g. 0 for Sentinel-2) is
    turned into NaN, the nodata value of the pairs.

    Args:
        datasets: one TorchGeo dataset per modality, e.g. ``{'s2': Sentinel2(...), 's1':
            Sentinel1(...)}``; the first sets the grid.
        max_gap_days: largest time between acquisitions of paired scenes, in days (None:
            spatial intersection only). Needs datasets that index acquisition dates (a
            ``filename_regex`` with a ``date`` group); without dates every pair passes.
        transforms: applied to each sample.

    Raises:
        DataError: if fewer than two modalities are given, a band name occurs in two of them,
            the footprints do not overlap, or no pair is acquired within ``max_gap_days``.
    """

    def __init__(
        self,
        datasets: Mapping[str, GeoDataset],
        max_gap_days: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Intersect the modalities' indexes."""
        if len(datasets) < 2:
            raise DataError(
                f"PairedDataset needs two or more modalities, got {list(datasets)}; give e.g. "
                "{'s2': Sentinel2(...), 's1': Sentinel1(...)} or use the dataset alone."
            )
        for name, dataset in datasets.items():
            if not isinstance(dataset, GeoDataset):
                raise DataError(
                    f"modality {name!r} is a {type(dataset).__name__}, not a "
                    "TorchGeo GeoDataset (e.g. geodino.datasets.Sentinel1)."
                )
            if isinstance(dataset, TimeSeries) or is_time_series(dataset):
                # one stacked (C, H, W) image cannot hold a (T, C, H, W) series
                raise DataError(
                    f"modality {name!r} is a time series ({type(dataset).__name__}); "
                    "PairedDataset stacks single-date chips. Read the series with "
                    "geodino.datasets.TimeSeries and give FusionViT a dict with "
                    f"{name!r} and '{name}_doy' (docs/fusion.md, Time series)."
                )
        if max_gap_days is not None and not max_gap_days >= 0:
            raise DataError(
                f"max_gap_days={max_gap_days} must be >= 0 (or null for a spatial "
                "intersection only)."
            )
        self.modalities: dict[str, GeoDataset] = dict(datasets)
        self.max_gap_days = max_gap_days
        names = self.band_names
        duplicated = sorted({b for b in names if names.count(b) > 1})
        if duplicated:
            raise DataError(
                f"bands {duplicated} occur in more than one of the modalities "
                f"{list(datasets)}; select distinct bands per modality (their statistics are "
                "kept by band name)."
            )
        grid = next(iter(datasets.values()))
        extents = {n: _extent(d, grid.crs) for n, d in datasets.items()}
        items = list(datasets.items())
        left: GeoDataset = items[0][1]
        for i in range(1, len(items) - 1):
            left = _intersect(
                left, items[i][1], self._describe(items[: i + 1], extents), max_gap_days
            )
        self._check_overlap(items, extents)
        super().__init__(left, items[-1][1], spatial_only=True, transforms=transforms)
        overlay = _overlay(self)
        # the files of each pair, for messages naming where a chip was read
        files = [c for c in overlay.columns if c.startswith("filepath")]
        self.index["filepath"] = [
            " & ".join(str(v) for v in row if isinstance(v, str))
            for row in overlay[files].itertuples(index=False)
        ]
        if max_gap_days is not None:
            _keep_within(self, max_gap_days, self._describe(items, extents), overlay)

    @staticmethod
    def _describe(items: list[tuple[str, GeoDataset]], extents: dict[str, str]) -> str:
        return "; ".join(f"{n} ({type(d).__name__}) covers {extents[n]}" for n, d in items)

    def _check_overlap(self, items: list[tuple[str, GeoDataset]], extents: dict[str, str]) -> None:
        crs = items[0][1].crs
        footprints = []
        for _, dataset in items:
            index = dataset.index.to_crs(crs)
            footprints.append(index.geometry.union_all())
        common = footprints[0]
        for other in footprints[1:]:
            common = common.intersection(other)
        if common.is_empty or common.area == 0:
            raise DataError(
                "the modalities do not overlap in space: "
                + self._describe(items, extents)
                + f" (in {crs.to_string()}). Point every modality at scenes of the same area."
            )

    # --- what the data module reads ----------------------------------------------------
    @property
    def band_groups(self) -> dict[str, int]:
        """Band count of each modality, in channel order."""
        return {n: len(_bands(d)) for n, d in self.modalities.items()}

    @property
    def band_names(self) -> list[str]:
        """Names of the stacked bands, modality after modality."""
        return [b for d in self.modalities.values() for b in _bands(d)]

    @property
    def band_kinds(self) -> list[str]:
        """``optical`` or ``sar`` per stacked band, from each modality's dataset."""
        return [kind for d in self.modalities.values() for kind in band_kinds_of(d, len(_bands(d)))]

    @property
    def nodata(self) -> float:
        """NaN: each modality's nodata value becomes NaN in the stacked image."""
        return math.nan

    def __getitem__(self, query: Any) -> Sample:
        """Read every modality for the same query and stack their bands.

        Args:
            query: a TorchGeo (x, y, t) slice query.

        Returns:
            the sample: ``image`` (C, H, W) float32 with NaN for nodata, and the first
            modality's ``bounds`` and ``transform``.
        """
        images = []
        sample: Sample = {}
        for dataset in self.modalities.values():
            part = dataset[query]
            image = part["image"].float()
            nodata = nodata_of(dataset)
            if nodata is not None and not math.isnan(nodata):
                image = torch.where(image == nodata, torch.nan, image)
            images.append(image)
            if not sample:
                sample = {k: v for k, v in part.items() if k != "image"}
        shapes = {n: tuple(i.shape[-2:]) for n, i in zip(self.modalities, images, strict=True)}
        if len(set(shapes.values())) > 1:
            raise DataError(
                f"modalities read onto different grids {shapes} for query "
                f"{query}; this is a bug in the datasets' resampling."
            )
        sample["image"] = torch.cat(images, dim=0)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def _bands(dataset: GeoDataset) -> list[str]:
    names = dataset.band_names if isinstance(dataset, NamedBands) else None
    names = names or getattr(dataset, "bands", None)  # a TorchGeo RasterDataset's bands
    if not names:
        raise DataError(
            f"{type(dataset).__name__} does not name its bands; use a geodino "
            "dataset (Sentinel2, Sentinel1, MultiBandGeoTIFF) per modality."
        )
    return list(names)


def _extent(dataset: GeoDataset, crs: Any) -> str:
    x0, y0, x1, y1 = dataset.index.to_crs(crs).total_bounds
    return f"x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}"


def _intersect(
    left: GeoDataset, right: GeoDataset, described: str, max_gap_days: float | None
) -> IntersectionDataset:
    try:
        pair = IntersectionDataset(left, right, spatial_only=True)
    except RuntimeError:
        raise DataError(
            f"the modalities do not overlap in space: {described}. Point every "
            "modality at scenes of the same area."
        ) from None
    if max_gap_days is not None:
        _keep_within(pair, max_gap_days, described, _overlay(pair))
    return pair


def _gap_days(a: pd.IntervalIndex, b: pd.IntervalIndex) -> np.ndarray:
    """Days between two acquisition intervals, 0 where they overlap."""

    def days(values: Any) -> np.ndarray:
        # float days: open-ended intervals (pandas' min/max timestamps) overflow in int64 ns
        return np.asarray(values, dtype="datetime64[ns]").astype(np.int64) / 86400e9

    left = np.maximum(days(a.left), days(b.left))
    right = np.minimum(days(a.right), days(b.right))
    gap: np.ndarray = np.maximum(left - right, 0.0)
    return gap


def _overlay(pair: IntersectionDataset) -> gpd.GeoDataFrame:
    """The intersection of the pair's two indexes, row for row as TorchGeo computes it.

    With both sides' columns (``datetime_1``, ``datetime_2``, file paths).
    """
    first, second = (d.index.reset_index() for d in pair.datasets)
    return gpd.overlay(first, second, how="intersection", keep_geom_type=True)


def _keep_within(
    pair: IntersectionDataset, max_gap_days: float, described: str, overlay: gpd.GeoDataFrame
) -> None:
    """Drop the spatial pairs of ``pair`` acquired more than ``max_gap_days`` apart.

    The kept pairs are indexed over the span of both acquisitions, so that a query of the
    pairs' time range finds every modality's scene.
    """
    a = pd.IntervalIndex(list(overlay["datetime_1"]))
    b = pd.IntervalIndex(list(overlay["datetime_2"]))
    gaps = _gap_days(a, b)
    keep = gaps <= max_gap_days
    if not keep.any():
        raise DataError(
            f"the modalities overlap in space but no pair of scenes is acquired within "
            f"max_gap_days={max_gap_days} (the closest pair is {gaps.min():.1f} days apart): "
            f"{described}. Raise max_gap_days or add scenes acquired closer in time."
        )
    dropped = int((~keep).sum())
    if dropped:
        log.info(
            "dropped %d of %d spatial pairs acquired more than %s days apart",
            dropped,
            len(keep),
            max_gap_days,
        )
    index = pair.index.iloc[np.flatnonzero(keep)].copy()
    index.index = pd.IntervalIndex.from_arrays(
        np.minimum(a.left.values, b.left.values)[keep],
        np.maximum(a.right.values, b.right.values)[keep],
        closed="both",
        name="datetime",
    )
    pair.index = index
