"""Any n-band GeoTIFF catalog as a TorchGeo raster dataset, with files checked at indexing."""

import fnmatch
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import rasterio
import torch
from pyproj import CRS
from rasterio import windows
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import array_to_tensor, find_files

from geodino.bands import described_band_names
from geodino.datasets.footprints import FootprintGrid
from geodino.datasets.handles import OpenFiles, open_file_budget
from geodino.errors import DataError

log = logging.getLogger(__name__)

#: Suffixes indexed by default (compared case-insensitively).
RASTER_SUFFIXES = (".tif", ".tiff")
#: File dtypes that chips keep on their way to the device (:meth:`MultiBandGeoTIFF.raw_sample`):
#: exact in float32 and no larger than it; other dtypes are cast to float32 when read.
RAW_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "float32"))


@dataclass(frozen=True)
class RasterInfo:
    """What indexing learned from one readable raster file."""

    path: str
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    res: tuple[float, float]
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None


def find_rasters(
    paths: str | Path | Iterable[str | Path], what: str = "GeoTIFF", pattern: str = "*"
) -> list[str]:
    """Every ``*.tif``/``*.tiff`` file (any case) under the given files or folders, sorted.

    Folders are searched recursively; GDAL virtual paths (``/vsizip/...``, ``/vsis3/...``)
    are listed through TorchGeo.

    Args:
        paths: files, folders or GDAL virtual paths.
        what: what is being looked for, for the error message.
        pattern: glob the file names must also match (e.g. ``*_S2Hand.tif``).

    Returns:
        the raster paths, without duplicates.

    Raises:
        DataError: if a path does not exist or no raster is found.
    """
    roots = [paths] if isinstance(paths, str | Path) else list(paths)
    if not roots:
        raise DataError(f"`paths` is empty; give at least one folder or file of {what}s.")
    found: set[str] = set()
    others: dict[str, int] = {}
    for root in roots:
        text = str(root)
        if text.startswith("/vsi"):
            candidates = find_files(text, "*")
            if candidates == [text] and not text.lower().endswith(RASTER_SUFFIXES):
                raise DataError(
                    f"{text} cannot be listed (GDAL lists folders inside an archive, not its "
                    "root); point `paths` at a folder inside it (e.g. /vsizip/tiles.zip/tiles) "
                    "or at the rasters themselves."
                )
        elif Path(text).is_file():
            candidates = [text]
        elif Path(text).is_dir():
            candidates = [str(p) for p in Path(text).rglob("*") if p.is_file()]
        else:
            raise DataError(f"{text} does not exist; point `paths` at a folder of {what} files.")
        for candidate in candidates:
            name = os.path.basename(candidate)
            if name.lower().endswith(RASTER_SUFFIXES) and fnmatch.fnmatch(name, pattern):
                found.add(candidate)
            elif not name.startswith("."):
                suffix = os.path.splitext(name)[1].lower() or name
                others[suffix] = others.get(suffix, 0) + 1
    if not found:
        seen = ", ".join(f"{n} {s}" for s, n in sorted(others.items(), key=lambda kv: -kv[1])[:5])
        glob = "*.tif, *.tiff" if pattern == "*" else f"{pattern}, ending .tif or .tiff"
        raise DataError(
            f"no {what} files ({glob}) under {', '.join(map(str, roots))}"
            f"{f' (found: {seen})' if seen else ' (the folder is empty)'}; check the folder "
            "and the file pattern, or convert the rasters to GeoTIFF (`gdal_translate -of "
            "COG in.jp2 out.tif`)."
        )
    return sorted(found)


def inspect_raster(path: str) -> RasterInfo:
    """Open a raster, check that it is georeferenced and that its last block reads.

    Args:
        path: the file.

    Returns:
        its band count, dtype, nodata, band descriptions and resolution.

    Raises:
        DataError: naming the file and the fix, if it cannot be used.
    """
    try:
        with rasterio.open(path) as src:
            # Reading the last block first proves the file is complete: a truncated GeoTIFF
            # opens (often without its georeferencing) but fails on the blocks it lost.
            src.read(src.count, window=Window(src.width - 1, src.height - 1, 1, 1))
            gcps, gcp_crs = src.gcps
            if src.crs is None and (not gcps or gcp_crs is None):
                raise DataError(
                    f"{path} has no CRS: geodino cannot place it on the map. Assign one "
                    "(QGIS: Raster > Projections > Assign Projection, or `gdal_edit.py -a_srs "
                    "EPSG:xxxx`)."
                )
            t = src.transform
            if src.crs is not None and t.is_identity and not gcps:
                raise DataError(
                    f"{path} has a CRS but no geotransform (pixel size and origin); "
                    "georeference it (`gdal_translate -a_ullr ulx uly lrx lry`, or QGIS "
                    "Georeferencer)."
                )
            if src.crs is not None and (t.b != 0 or t.d != 0):
                raise DataError(
                    f"{path} has a rotated or sheared geotransform ({tuple(t)[:6]}); warp it "
                    "to a north-up grid first (`gdalwarp`)."
                )
            dtypes = set(src.dtypes)
            if len(dtypes) > 1:
                raise DataError(f"{path} mixes band dtypes {sorted(dtypes)}; rewrite it with one.")
            return RasterInfo(
                path,
                src.count,
                src.dtypes[0],
                src.nodata,
                tuple(src.descriptions),
                (abs(t.a), abs(t.e)),
                None if src.crs is None else src.crs.to_string(),
                tuple(src.bounds),
            )
    except DataError:
        raise
    except Exception as error:  # rasterio raises many types for damaged files
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{path} cannot be read as a raster ({first}): it is empty, truncated or not a "
            "GeoTIFF. Re-download or re-export it, or remove it from the folder."
        ) from None


def inspect_catalog(
    files: Sequence[str], on_unreadable: Literal["raise", "warn"]
) -> tuple[list[RasterInfo], list[str]]:
    """Inspect every file; raise on the first bad one or skip it with a logged warning.

    Args:
        files: raster paths.
        on_unreadable: ``raise`` or ``warn`` (skip, log and count).

    Returns:
        the readable files' info and the skipped paths.

    Raises:
        DataError: for a bad file with ``raise``, or when no file is readable.
    """
    if on_unreadable not in ("raise", "warn"):
        raise DataError(f"on_unreadable must be 'raise' or 'warn', got {on_unreadable!r}.")
    infos, skipped = [], []
    for path in files:
        try:
            infos.append(inspect_raster(path))
        except DataError as error:
            if on_unreadable == "raise":
                raise
            log.warning("skipping %s", error)
            skipped.append(path)
    if skipped:
        log.warning("skipped %d of %d raster files that cannot be used", len(skipped), len(files))
    if not infos:
        raise DataError(f"none of the {len(files)} raster files can be read; see the warnings.")
    return infos, skipped


def check_uniform(infos: Sequence[RasterInfo], expected_count: int | None = None) -> None:
    """Every file of a catalog must have the same band count and dtype.

    Args:
        infos: the inspected files.
        expected_count: the band count the configuration declares, if any.

    Raises:
        DataError: naming two disagreeing files.
    """
    first = infos[0]
    if expected_count is not None and first.count != expected_count:
        raise DataError(
            f"{first.path} has {first.count} bands but {expected_count} band names were "
            "given; list one name per band of the files."
        )
    for info in infos[1:]:
        if info.count != first.count:
            raise DataError(
                f"{info.path} has {info.count} bands but {first.path} has {first.count}: one "
                "catalog must hold one kind of raster; split them into separate folders."
            )
        if info.dtype != first.dtype:
            raise DataError(
                f"mixed dtypes: {info.path} is {info.dtype} but {first.path} is {first.dtype}; "
                "convert the catalog to one dtype (gdal_translate -ot) or split it."
            )


@dataclass(frozen=True)
class NodataChoice:
    """The nodata value of returned images, and the value to impose on the files if any."""

    value: float | None
    override: float | None


def resolve_nodata(
    infos: Sequence[RasterInfo],
    nodata: float | None,
    fallback: float | None = None,
    mask_fallback: bool = False,
) -> NodataChoice:
    """Decide the catalog's nodata value from the argument and the files.

    Reading applies one value to every file (TorchGeo's ``nodata`` override, a WarpedVRT per
    file) only where the files do not already agree on it, as that costs read speed.

    Args:
        infos: every file of the catalog.
        nodata: the user's value (marks missing pixels in every file), or None.
        fallback: value when neither the user nor any file gives one.
        mask_fallback: also treat ``fallback`` pixels of the files as missing (needed where
            reads interpolate, so that valid pixels never blend with the fill value).

    Returns:
        the choice.

    Raises:
        DataError: if files declare different nodata values and none is given.
    """
    if nodata is not None:
        agree = all(_same(nodata, i.nodata) for i in infos)
        return NodataChoice(nodata, None if agree else nodata)
    declared: list[RasterInfo] = []
    for info in infos:
        if info.nodata is not None and not any(_same(info.nodata, d.nodata) for d in declared):
            declared.append(info)
    if len(declared) > 1:
        a, b = declared[:2]
        raise DataError(
            f"{b.path} declares nodata {b.nodata} but {a.path} declares {a.nodata}; one "
            "catalog needs one nodata value. Fix the files (convert the missing pixels, then "
            "`gdal_edit.py -a_nodata VALUE file.tif`), or split them into separate folders."
        )
    if declared:
        value = declared[0].nodata
        complete = all(i.nodata is not None for i in infos)
        # files without a nodata tag follow the catalog's value
        return NodataChoice(value, None if complete else value)
    return NodataChoice(fallback, fallback if mask_fallback else None)


def default_band_names(info: RasterInfo) -> list[str]:
    """Band descriptions of a file when they name its bands, else ``B1``..``Bn``.

    GDAL's stand-ins ``Band 1``..``Band N`` name nothing (see
    :func:`~geodino.bands.described_band_names`).

    Args:
        info: the inspected file.

    Returns:
        one name per band.
    """
    return described_band_names(info.descriptions) or [f"B{i + 1}" for i in range(info.count)]


class MultiBandGeoTIFF(RasterDataset):
    """Any catalog of n-band GeoTIFFs (e.g. 8-band WorldView/PlanetScope, drone imagery).

    Every ``*.tif``/``*.tiff`` under ``paths`` is checked when the dataset is built: a file
    that cannot be read is an error naming it (TorchGeo alone would skip it silently), or,
    with ``on_unreadable="warn"``, a logged warning and an entry in :attr:`unreadable`.

    Args:
        paths: folders (searched recursively) or files.
        crs: CRS to work in (default: the first file's); other files are warped to it.
        res: resolution in CRS units (default: the first file's).
        bands: names of the bands to return (default: all).
        band_names: one name per band of the files (default: the files' band descriptions,
            else ``B1``..``Bn``).
        nodata: value marking missing data (default: the files' own nodata value).
        transforms: applied to each sample.
        cache: keep file handles open between reads: every file this process reads, up to
            a budget from its file descriptor limit (``geodino.datasets.handles``).
        on_unreadable: ``raise`` on an unreadable file, or ``warn`` and skip it.
    """

    #: ``optical`` or ``sar``: which photometric augmentations apply to these bands.
    band_kind: ClassVar[str] = "optical"
    #: What the files are, for error messages.
    what: ClassVar[str] = "GeoTIFF"
    #: Glob the file names must match besides the ``.tif``/``.tiff`` suffix; subclass to
    #: narrow a mixed folder (e.g. ``"*_S2Hand.tif"``).
    filename_glob: str = "*"

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[str] | None = None,
        band_names: Sequence[str] | None = None,
        nodata: float | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
        on_unreadable: Literal["raise", "warn"] = "raise",
    ) -> None:
        """Find, check and index the files."""
        files = find_rasters(paths, self.what, self.filename_glob)
        infos, self.unreadable = inspect_catalog(files, on_unreadable)
        check_uniform(infos, None if band_names is None else len(band_names))
        # torchgeo declares a tuple; geodino's sources keep a list, as users compare them
        self.all_bands = list(band_names) if band_names else default_band_names(infos[0])  # type: ignore[assignment]
        self._setup(infos, crs, res, bands, resolve_nodata(infos, nodata), transforms, cache)

    def _setup(
        self,
        infos: Sequence[RasterInfo],
        crs: CRS | None,
        res: float | tuple[float, float] | None,
        bands: Sequence[str] | None,
        nodata: NodataChoice,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None,
        cache: bool,
    ) -> None:
        if bands is not None:
            unknown = [b for b in bands if b not in self.all_bands]
            if unknown:
                raise DataError(
                    f"unknown bands {unknown} for {infos[0].path}; available: {self.all_bands}."
                )
        self.effective_nodata, self._nodata_override = nodata.value, nodata.override
        super().__init__(
            paths=[i.path for i in infos],
            crs=crs,
            res=res,
            bands=list(bands) if bands else None,
            transforms=transforms,
            cache=cache,
        )

    @property
    def resampling(self) -> Resampling:
        """Nearest neighbour, unlike TorchGeo's bilinear default.

        Chips on the files' own grid read exactly, and nodata pixels never blend into their
        neighbours (TorchGeo's bilinear default does both).
        """
        return Resampling.nearest

    @property
    def band_names(self) -> list[str]:
        """Names of the bands returned, in channel order."""
        return list(self.bands)

    @property
    def nodata(self) -> float | None:
        """Value marking missing data in returned images (NaN allowed)."""
        return self.effective_nodata

    @nodata.setter
    def nodata(self, value: float | None) -> None:
        self.effective_nodata = value

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """The sample at a ``(x, y, t)`` slice query, as TorchGeo's ``RasterDataset`` returns it.

        A chip that lies inside a single file, on that file's own grid and CRS, is one
        windowed read of that file; everything else (mosaics, warps, chips crossing a file's
        edge, per-band files) goes through TorchGeo's merge. Both give the same pixels.

        Args:
            index: the query.

        Returns:
            the sample (``image``, ``bounds``, ``transform``).
        """
        sample = self._read_native(index)
        return super().__getitem__(index) if sample is None else sample

    def raw_sample(self, index: Any, out: np.ndarray | None = None) -> dict[str, Any]:
        """The sample at a query with the image in the files' own dtype where that saves work.

        What loader workers read: a chip inside one file (on the file's grid, or through
        TorchGeo's warped view of a file in another CRS) keeps its integer dtype of at most
        16 bits (uint8, int8, uint16, int16) or float32, half the bytes of float32 for
        Sentinel-2's uint16, and no cast in the worker;
        :class:`~geodino.datamodules.GeoDINODataModule` casts batches to float32 on the
        device. Every other chip (mosaics, chips across a file's edge, transforms,
        subclasses that change pixels in ``__getitem__``) is ``self[index]``, float32.
        Either way ``image.float()`` equals ``self[index]["image"]`` exactly.

        Args:
            index: the query.
            out: where to read the image, e.g. the chip's slot in a batch: used when the
                chip is one read of a single file with the array's shape and dtype (the
                image is then ``out`` itself), else left untouched.

        Returns:
            the sample (``image``, ``bounds``, ``transform``).
        """
        if (
            self.is_image
            and self.transforms is None
            and self.dtype == torch.float32
            and type(self).__getitem__ is MultiBandGeoTIFF.__getitem__
        ):
            sample = self._read_native(index, raw=True, out=out)
            if sample is not None:
                return sample
        return self[index]

    def _file_boxes(self) -> tuple[FootprintGrid, list[str]] | None:
        """Footprints of the indexed files, bucketed for lookups, and their paths, once.

        None when files differ in time span, where TorchGeo's time filter must decide.
        """
        cached = self.__dict__.get("_boxes")
        if cached is None:
            times = self.index.index
            uniform = bool(
                (times.left == times.left[0]).all() and (times.right == times.right[0]).all()
            )
            boxes = np.asarray(self.index.geometry.bounds, dtype=np.float64)
            cached = (FootprintGrid(boxes), list(self.index.filepath)) if uniform else ()
            self.__dict__["_boxes"] = cached
        return cached or None

    def _read_native(
        self, index: Any, raw: bool = False, out: np.ndarray | None = None
    ) -> dict[str, Any] | None:
        """One read for a chip inside one file, else None.

        The read is a window of the file on its own grid, or of TorchGeo's warped view of it.

        With ``raw`` the image keeps the file's dtype if it is one of :data:`RAW_DTYPES`
        (else it is float32) and the dataset's transforms are not applied; it is read into
        ``out`` if that has the chip's shape and the file's dtype.
        """
        if self.separate_files or self.time_series or not self.cache:
            return None
        if not (
            isinstance(index, tuple)
            and len(index) == 3
            and all(isinstance(s, slice) and None not in (s.start, s.stop, s.step) for s in index)
        ):
            return None
        files = self._file_boxes()
        if files is None:
            return None
        x, y, t = index
        footprints, paths = files
        hits = footprints.overlapping(x.start, y.start, x.stop, y.stop)
        if len(hits) != 1:
            return None  # a mosaic: merge decides which file wins where
        grid = self._open_files()[paths[hits[0]]].grid
        if grid is None:
            return None  # a mask other than the nodata value: merge applies it
        read = self._read_warped if grid.warped else self._read_window
        data = read(grid, x, y, out if raw else None)
        if data is None:
            return None  # off the file's grid or across its edge: merge decides
        if raw and data.dtype in RAW_DTYPES:
            image = torch.from_numpy(data)
        elif self.dtype == torch.float32:
            # numpy's single-threaded cast is ~30x faster than torch's on one chip
            image = torch.from_numpy(data.astype(np.float32))
        else:
            image = array_to_tensor(data).to(self.dtype)
        sample: dict[str, Any] = {
            "bounds": torch.tensor(
                [
                    x.start,
                    x.stop,
                    x.step,
                    y.start,
                    y.stop,
                    y.step,
                    t.start.timestamp(),
                    t.stop.timestamp(),
                    t.step,
                ]
            ),
            # torch.tensor(from_origin(x.start, y.stop, x.step, y.step)), a fifth of the cost
            "transform": torch.tensor(
                [x.step, 0.0, x.start, 0.0, -y.step, y.stop, 0.0, 0.0, 1.0],
                dtype=torch.get_default_dtype(),
            ),
        }
        if self.is_image:
            sample["image"] = image
        else:
            sample["mask"] = image.squeeze(-3)
        if raw or self.transforms is None:
            return sample
        return self.transforms(sample)

    def _read_window(
        self, grid: "_OpenFile", x: slice, y: slice, out: np.ndarray | None
    ) -> np.ndarray | None:
        """A chip on the file's own grid: one integer window, no resampling.

        None if the chip is off that grid, at another resolution or crosses the file's edge.
        """
        col = (x.start - grid.left) / grid.xres
        row = (grid.top - y.stop) / grid.yres
        width, height = (x.stop - x.start) / x.step, (y.stop - y.start) / y.step
        if (
            abs(grid.xres - x.step) > 1e-9 * x.step
            or abs(grid.yres - y.step) > 1e-9 * y.step
            or max(abs(v - round(v)) for v in (col, row, width, height)) > 1e-6
        ):
            return None  # another resolution, or off the file's pixel grid: resample
        col, row, width, height = round(col), round(row), round(width), round(height)
        if col < 0 or row < 0 or col + width > grid.width or row + height > grid.height:
            return None  # crosses the file's edge: merge fills the outside with nodata
        return grid.read(self.band_indexes, Window(col, row, width, height), (height, width), out)

    def _read_warped(
        self, grid: "_OpenFile", x: slice, y: slice, out: np.ndarray | None
    ) -> np.ndarray | None:
        """A chip inside one warped file: the read ``rasterio.merge.merge`` makes for it.

        Without the masked read (a second warp, as long as the first) whose mask is the
        nodata value merge fills in anyway; None if the chip crosses the file's edge.
        """
        # int(): query bounds may be NumPy scalars, whose round() stays a float
        width = int(round((x.stop - x.start) / x.step))  # noqa: RUF046
        height = int(round((y.stop - y.start) / y.step))  # noqa: RUF046
        # the chip's bounds as merge derives them from its output grid
        left, bottom, right, top = windows.bounds(
            Window(0, 0, width, height),
            Affine.translation(x.start, y.stop) @ Affine.scale(x.step, -y.step),
        )
        if not (
            grid.left <= left and right <= grid.right and grid.bottom <= bottom and top <= grid.top
        ):
            return None  # merge reads the part inside the file and fills the rest
        window = windows.from_bounds(left, bottom, right, top, grid.reader.transform)
        return grid.read(self.band_indexes, window, (height, width), out, self.resampling)

    def _open_files(self) -> OpenFiles["_Handle"]:
        """This process's open files, each with its grid; created on the first read.

        Every file the process reads stays open up to
        :func:`~geodino.datasets.handles.open_file_budget` files
        (TorchGeo keeps 128 per process, so past that nearly every chip reopened its file).
        The grid is kept with the handle: looking a handle up through TorchGeo's cache
        hashes the CRS (its WKT) on every chip, ~0.3 ms, and each attribute of rasterio's
        transform costs microseconds. Never pickled: loader workers open their own.
        """
        files: OpenFiles[_Handle] | None = self.__dict__.get("_handles")
        if files is None:
            count = len(set(self.index.filepath)) if "filepath" in self.index else None
            files = OpenFiles(open_file_budget(count), self._open_handle, _Handle.close)
            self.__dict__["_handles"] = files
        return files

    def _open_handle(self, path: str) -> "_Handle":
        reader = self._load_warp_file(path, self.crs)
        if self.separate_files:  # one band per file, read through merge only
            return _Handle(reader, None)
        return _Handle(reader, _OpenFile.of(reader, self.band_indexes))

    def _cached_load_warp_file(self, filepath: Any, crs: Any) -> Any:  # type: ignore[override]
        """The file's handle from this process's open files (TorchGeo's merge reads through it).

        Replaces TorchGeo's ``lru_cache`` of 128 handles per process, so that merged reads
        (mosaics, per-band files, chips across a file's edge) keep as many files open as
        windowed reads do, and no file is open twice.
        """
        if crs is not None and crs is not self.crs and crs != self.crs:
            return self._load_warp_file(filepath, crs)
        return self._open_files()[str(filepath)].reader

    def __getstate__(self) -> dict[str, Any]:
        """The dataset's attributes without open file handles, for loader workers."""
        state = self.__dict__.copy()
        state.pop("_handles", None)
        return state

    def _load_warp_file(self, filepath: Any, crs: Any = None) -> Any:
        # RasterDataset reads `self.nodata` to decide whether to override the files' value.
        saved = self.__dict__.get("effective_nodata")
        try:
            self.__dict__["effective_nodata"] = getattr(self, "_nodata_override", None)
            return super()._load_warp_file(filepath, crs)
        finally:
            self.__dict__["effective_nodata"] = saved


class _Handle(NamedTuple):
    """An open file (or TorchGeo's view of it) and its grid (None: reads go through merge)."""

    reader: DatasetReader | WarpedVRT
    grid: "_OpenFile | None"

    def close(self) -> None:
        """Close the file."""
        self.reader.close()


class _OpenFile(NamedTuple):
    """An open file, or TorchGeo's warped view of it, with what each chip's read needs."""

    reader: DatasetReader | WarpedVRT
    warped: bool
    left: float
    bottom: float
    right: float
    top: float
    xres: float
    yres: float
    width: int
    height: int
    bands: int
    dtype: np.dtype | None

    @classmethod
    def of(cls, src: Any, band_indexes: Sequence[int] | None) -> "_OpenFile | None":
        """The grid of a handle.

        None where the read bands have a mask other than their nodata value (an alpha band,
        an internal mask): only merge's masked read applies it.

        Args:
            src: the handle TorchGeo opened (the file, or a VRT warping it or overriding
                its nodata).
            band_indexes: the bands read (None: all).

        Returns:
            the grid; ``dtype`` is the one all bands share (what a read returns), else None.
        """
        warped = not isinstance(src, DatasetReader)
        bands = list(range(1, src.count + 1)) if band_indexes is None else list(band_indexes)
        if any(
            set(src.mask_flag_enums[b - 1]) - {MaskFlags.nodata, MaskFlags.all_valid} for b in bands
        ):
            return None
        t, bounds = src.transform, src.bounds
        dtypes = set(src.dtypes)
        return cls(
            src,
            warped,
            bounds.left,
            bounds.bottom,
            bounds.right,
            bounds.top,
            t.a,
            -t.e,
            src.width,
            src.height,
            len(bands),
            np.dtype(dtypes.pop()) if len(dtypes) == 1 else None,
        )

    def read(
        self,
        band_indexes: Sequence[int] | None,
        window: Window,
        size: tuple[int, int],
        out: np.ndarray | None = None,
        resampling: Resampling = Resampling.nearest,
    ) -> np.ndarray:
        """The bands in a window at ``size`` (height, width), into ``out`` where it fits.

        Args:
            band_indexes: the bands (None: all).
            window: the window of :attr:`reader`.
            size: the output height and width.
            out: an array to read into, used if it has the output's shape and the file's
                dtype.
            resampling: resampling from the window to ``size``.

        Returns:
            the pixels (``out`` itself if it was used).
        """
        shape = (self.bands, *size)
        if out is not None and out.dtype == self.dtype and out.shape == shape:
            pixels: np.ndarray = self.reader.read(
                band_indexes, window=window, out=out, resampling=resampling
            )
        else:
            pixels = self.reader.read(
                band_indexes, window=window, out_shape=shape, resampling=resampling
            )
        return pixels


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))
