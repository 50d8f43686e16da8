"""Sentinel-2 and Sentinel-1 catalogs: band stacks or one file per band, as distributed."""

import logging
import math
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pyproj import CRS
from rasterio.enums import Resampling

from geodino.bands import canonical_s2_band
from geodino.datasets.geotiff import (
    MultiBandGeoTIFF,
    RasterInfo,
    check_uniform,
    find_rasters,
    inspect_catalog,
    resolve_nodata,
)
from geodino.errors import DataError

log = logging.getLogger(__name__)

#: Sentinel-2 MSI bands in product order (B8A after B08).
S2_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
#: Bands of a 12-band L2A stack (no cirrus band B10).
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_BANDS if b != "B10")
#: Sentinel-1 GRD polarisations.
S1_BANDS: tuple[str, ...] = ("VV", "VH")

_S2_TOKEN = re.compile(r"(?:^|[_\-.])(B(?:0?[1-9]|1[0-2]|8A))$", re.IGNORECASE)
_S1_TOKEN = re.compile(r"(?:^|[_\-.])(VV|VH|HH|HV)$", re.IGNORECASE)


def _scene_and_band(
    path: str, token: re.Pattern[str], canonical: Callable[[str], str]
) -> tuple[str, str]:
    """Scene key (folder and file stem without the band token) and band of a per-band file.

    Args:
        path: the file.
        token: pattern finding the band name at the end of the stem.
        canonical: canonical band name.

    Returns:
        the scene key and the band.

    Raises:
        DataError: if the file name carries no band name.
    """
    stem = Path(path).stem
    match = token.search(stem)
    if match is None:
        raise DataError(
            f"{path} carries no band name in its file name while other files of the "
            "folder do (e.g. *_B02.tif, *_VV.tif); remove it or move it elsewhere."
        )
    return os.path.join(os.path.dirname(path), stem[: match.start(1)]), canonical(match.group(1))


class _PerBandFiles:
    """One file per band: scenes keyed by folder and file stem without the band token."""

    def __init__(
        self, files: Sequence[str], token: re.Pattern[str], canonical: Callable[[str], str]
    ) -> None:
        self.scenes: dict[str, dict[str, str]] = {}
        self._scene_of: dict[str, str] = {}
        for path in files:
            key, band = _scene_and_band(path, token, canonical)
            scene = self.scenes.setdefault(key, {})
            if band in scene:
                raise DataError(
                    f"scene {key}* has two files for band {band}: {scene[band]} and {path}; "
                    "keep one of them."
                )
            scene[band] = path
            self._scene_of[path] = key

    def bands(self, order: Sequence[str], required: Sequence[str] | None = None) -> list[str]:
        """Bands that every scene has, in ``order``.

        Args:
            order: the sensor's band order.
            required: bands asked for (default: every band of any scene).

        Returns:
            the bands common to all scenes.

        Raises:
            DataError: naming a scene that lacks a required band.
        """
        union: set[str] = set().union(*self.scenes.values())
        needed = union if required is None else union & set(required)
        for key, bands in self.scenes.items():
            missing = sorted(needed - set(bands), key=lambda b: (b not in order, b))
            if missing:
                other = next(k for k, v in self.scenes.items() if missing[0] in v)
                raise DataError(
                    f"scene {key}* lacks band file(s) {missing} that {other}* has; "
                    "restore the missing files or move the scene out of the catalog."
                )
        common: set[str] = set.intersection(*(set(b) for b in self.scenes.values()))
        known = [b for b in order if b in common]
        return known + sorted(common - set(known))

    def reference_files(self, band: str) -> list[str]:
        """The file of one band for each scene (what the spatial index holds)."""
        return [bands[band] for bands in self.scenes.values()]

    def file(self, reference: str, band: str) -> str:
        """Path of ``band`` in the scene of ``reference``."""
        return self.scenes[self._scene_of[reference]][band]


def _is_per_band(files: Sequence[str], token: re.Pattern[str]) -> bool:
    tagged = [f for f in files if token.search(Path(f).stem)]
    # A majority decides, so that one stray file is named in an error, not mis-read.
    return len(tagged) > len(files) / 2


class _BandFileDataset(MultiBandGeoTIFF):
    """Shared indexing of sensors distributed either as band stacks or one file per band."""

    band_order: ClassVar[tuple[str, ...]] = ()
    token: ClassVar[re.Pattern[str]] = _S2_TOKEN
    #: nodata value when neither the user nor the files give one
    default_nodata: ClassVar[float | None] = None

    @staticmethod
    def canonical(name: str) -> str:
        """Canonical band name."""
        return name.strip().upper()

    def _index(
        self,
        paths: str | Path | Iterable[str | Path],
        crs: CRS | None,
        res: float | tuple[float, float] | None,
        bands: Sequence[str] | None,
        nodata: float | None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None,
        cache: bool,
        on_unreadable: Literal["raise", "warn"],
    ) -> None:
        files = find_rasters(paths, self.what, self.filename_glob)
        wanted = None if bands is None else [self.canonical(b) for b in bands]
        if _is_per_band(files, self.token):
            infos, self.unreadable = inspect_catalog(files, on_unreadable)
            if self.unreadable:
                infos = self._drop_damaged_scenes(infos)
            for info in infos:
                if info.count != 1:
                    raise DataError(
                        f"{info.path} is named for one band but holds {info.count} bands; "
                        "per-band files hold one band each. Rename the stack so its name "
                        "ends in no band name (e.g. scene.tif), or split its bands."
                    )
            groups = _PerBandFiles([i.path for i in infos], self.token, self.canonical)
            check_scene_grids(infos, groups)
            # torchgeo declares a tuple; geodino's sources keep a list, as users compare them
            self.all_bands = groups.bands(self.band_order, wanted)  # type: ignore[assignment]
            self._groups: _PerBandFiles | None = groups
            self.separate_files = True
            # The index holds one file per scene: the finest band, so res defaults to it.
            finest = min(self.all_bands, key=lambda b: _res(infos, groups, b))
            reference = [i for i in infos if i.path in set(groups.reference_files(finest))]
            self._reference_band = finest
            check_uniform_dtype(infos)
        else:
            infos, self.unreadable = inspect_catalog(files, on_unreadable)
            check_uniform(infos)
            self.all_bands = self.stack_band_names(infos[0])  # type: ignore[assignment]
            self._groups = None
            reference = infos
        # where bands are interpolated, the fill value must be masked or valid pixels at
        # scene edges would blend with it
        choice = resolve_nodata(infos, nodata, self.default_nodata, self.separate_files)
        self._setup(reference, crs, res, wanted, choice, transforms, cache)

    def _drop_damaged_scenes(self, infos: Sequence[RasterInfo]) -> list[RasterInfo]:
        """Leave out whole scenes of which a band file was skipped as unreadable.

        Args:
            infos: the readable files.

        Returns:
            the files of complete scenes.

        Raises:
            DataError: if no scene is left.
        """
        damaged: dict[str, str] = {}
        for path in self.unreadable:
            if self.token.search(Path(path).stem):
                damaged[_scene_and_band(path, self.token, self.canonical)[0]] = path
        for key, path in damaged.items():
            log.warning("skipping scene %s*: its band file %s cannot be read", key, path)
        kept = [
            i
            for i in infos
            if _scene_and_band(i.path, self.token, self.canonical)[0] not in damaged
        ]
        if not kept:
            raise DataError(
                f"every scene has an unreadable band file ({self.unreadable[:3]}...); see the "
                "warnings and re-download the files."
            )
        return kept

    @abstractmethod
    def stack_band_names(self, info: RasterInfo) -> list[str]:
        """Band names of a multi-band stack.

        Args:
            info: what the stack's file says about itself.

        Returns:
            one name per band.
        """

    @property
    def resampling(self) -> Resampling:
        """Bilinear when bands of several resolutions are put on one grid, else nearest."""
        return Resampling.bilinear if self.separate_files else Resampling.nearest

    def _update_filepath(self, band: str, filepath: str) -> str:
        assert self._groups is not None
        return self._groups.file(filepath, band)


def _res(infos: Sequence[RasterInfo], groups: _PerBandFiles, band: str) -> float:
    path = next(iter(groups.scenes.values()))[band]
    return next(i.res[0] for i in infos if i.path == path)


def check_scene_grids(infos: Sequence[RasterInfo], groups: _PerBandFiles) -> None:
    """The band files of one scene share a CRS and a footprint (resolutions may differ).

    Args:
        infos: the inspected band files.
        groups: the files grouped by scene.

    Raises:
        DataError: naming two band files of a scene that lie on different grids.
    """
    by_path = {i.path: i for i in infos}
    for key, bands in groups.scenes.items():
        first, *others = [by_path[p] for p in bands.values() if p in by_path]
        for info in others:
            if info.crs != first.crs:
                raise DataError(
                    f"band files of scene {key}* are in different CRSs: {info.path} is in "
                    f"{info.crs} but {first.path} in {first.crs}; warp them to one CRS "
                    "(`gdalwarp -t_srs`)."
                )
            # up to one pixel of the coarser file: exports differ in pixel-corner/centre
            # conventions (SSL4EO's 60 m bands sit 0.4 px off the 10 m ones)
            tolerance = max(info.res + first.res)
            if (
                info.bounds is not None
                and first.bounds is not None
                and any(
                    abs(a - b) > tolerance for a, b in zip(info.bounds, first.bounds, strict=True)
                )
            ):
                raise DataError(
                    f"band files of scene {key}* cover different areas: {info.path} spans "
                    f"{_fmt(info.bounds)} but {first.path} {_fmt(first.bounds)}; their bands "
                    "would not line up. Re-export them on one footprint (`gdalwarp -te "
                    "xmin ymin xmax ymax`)."
                )


def _fmt(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in bounds) + ")"


def check_uniform_dtype(infos: Sequence[RasterInfo]) -> None:
    """All band files of a catalog share one dtype.

    Args:
        infos: the inspected files.

    Raises:
        DataError: naming two files of different dtypes.
    """
    for info in infos[1:]:
        if info.dtype != infos[0].dtype:
            raise DataError(
                f"mixed dtypes: {info.path} is {info.dtype} but {infos[0].path} is "
                f"{infos[0].dtype}; convert the catalog to one dtype or split it."
            )


class Sentinel2(_BandFileDataset):
    """Sentinel-2 L1C/L2A reflectance, as 12/13-band stacks or one GeoTIFF per band.

    Layouts are detected: a multi-band file per scene (13 bands for L1C, 12 for L2A without
    B10; band descriptions are used when present), or one file per band as distributed
    (``*_B02.tif``, ``*_B8A.tif`` or SSL4EO-style ``<scene>/B2.tif``), the 20 m and 60 m bands
    resampled onto the query grid (10 m by default). Scenes in several UTM zones are warped
    to the dataset CRS (the first scene's by default).

    Args:
        paths: folders (searched recursively) or files.
        crs: CRS to work in (default: the first scene's).
        res: resolution (default: the finest band's, 10 m).
        bands: bands to return, e.g. ``["B04", "B03", "B02"]`` (``B4`` works too).
        nodata: nodata value (default: the files', else 0 as in Sentinel-2 products).
        transforms: applied to each sample.
        cache: keep file handles open between reads.
        on_unreadable: ``raise`` on an unreadable file, or ``warn`` and skip it.
    """

    band_kind: ClassVar[str] = "optical"
    what: ClassVar[str] = "Sentinel-2 GeoTIFF"
    #: 0 marks missing pixels in Sentinel-2 products (and is rasterio's fill value)
    default_nodata = 0.0
    band_order = S2_BANDS
    token = _S2_TOKEN

    @staticmethod
    def canonical(name: str) -> str:
        """Canonical Sentinel-2 band name (``B2`` -> ``B02``)."""
        return canonical_s2_band(name)

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[str] | None = None,
        nodata: float | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
        on_unreadable: Literal["raise", "warn"] = "raise",
    ) -> None:
        """Find, check and index the scenes."""
        self._index(paths, crs, res, bands, nodata, transforms, cache, on_unreadable)

    def stack_band_names(self, info: RasterInfo) -> list[str]:
        """S2 band names of a 12- or 13-band stack, from its descriptions when they name bands.

        Args:
            info: the inspected stack.

        Returns:
            one canonical band name per band.
        """
        described = [canonical_s2_band(d) if d else "" for d in info.descriptions]
        if all(d in S2_BANDS for d in described) and len(set(described)) == info.count:
            return described
        if info.count == 13:
            return list(S2_BANDS)
        if info.count == 12:
            return list(S2_L2A_BANDS)
        raise DataError(
            f"{info.path} has {info.count} bands; a Sentinel-2 stack has 13 (L1C) or 12 (L2A, "
            "no B10) bands, or band descriptions naming them. Use MultiBandGeoTIFF with "
            "band_names for other stacks."
        )


class Sentinel1(_BandFileDataset):
    """Sentinel-1 GRD backscatter: VV/VH stacks or ``*_VV.tif`` / ``*_VH.tif`` files.

    Args:
        paths: folders (searched recursively) or files.
        crs: CRS to work in (default: the first scene's).
        res: resolution (default: the first scene's).
        bands: polarisations to return.
        to_db: convert linear power to dB (10 log10); values <= 0 and nodata become NaN.
        nodata: nodata value of the files (default: their own); NaN after dB conversion.
        transforms: applied to each sample.
        cache: keep file handles open between reads.
        on_unreadable: ``raise`` on an unreadable file, or ``warn`` and skip it.
    """

    band_kind: ClassVar[str] = "sar"
    what: ClassVar[str] = "Sentinel-1 GeoTIFF"
    band_order = S1_BANDS
    token = _S1_TOKEN

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[str] = S1_BANDS,
        to_db: bool = False,
        nodata: float | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
        on_unreadable: Literal["raise", "warn"] = "raise",
    ) -> None:
        """Find, check and index the scenes."""
        self.to_db = to_db
        self._index(paths, crs, res, list(bands), nodata, transforms, cache, on_unreadable)
        self._raw_nodata = self.effective_nodata
        if to_db:
            # any raw nodata value is a valid dB value: after conversion nodata is NaN
            self.effective_nodata = math.nan

    def stack_band_names(self, info: RasterInfo) -> list[str]:
        """Polarisations of a stack, from its descriptions, else VV then VH.

        Args:
            info: the inspected stack.

        Returns:
            one name per band.
        """
        described = [(d or "").strip().upper() for d in info.descriptions]
        if all(described) and len(set(described)) == info.count:
            return described
        if info.count == 2:
            return list(S1_BANDS)
        raise DataError(
            f"{info.path} has {info.count} bands without descriptions; a Sentinel-1 stack has "
            "2 bands (VV, VH). Name the bands in the file or use MultiBandGeoTIFF."
        )

    def __getitem__(self, query: Any) -> dict[str, Any]:
        """Read a chip, converting to dB when asked.

        Args:
            query: a TorchGeo (x, y, t) slice query.

        Returns:
            the sample.
        """
        sample = super().__getitem__(query)
        if self.to_db:
            image = sample["image"]
            raw = self._raw_nodata
            invalid = (image <= 0) | torch.isnan(image)
            if raw is not None and not math.isnan(raw):
                invalid |= image == raw
            fill = self.effective_nodata
            sample["image"] = torch.where(
                invalid,
                torch.tensor(fill, dtype=image.dtype),
                10 * torch.log10(image.clamp_min(1e-10)),
            )
        return sample
