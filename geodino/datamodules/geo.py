"""Pretraining chips from TorchGeo raster datasets, optionally inside AOI polygons."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from geopandas import GeoDataFrame
from torch import Tensor
from torchgeo.datasets import GeoDataset

from geodino.datamodules.base import DINODataModule
from geodino.datasets.protocols import NamedBands, RawSampleSource, Sample
from geodino.errors import ConfigError, DataError
from geodino.samplers import AOISampler, Query
from geodino.seeding import torch_generator


class GeoChipDraw:
    """Draws the chip at a stream position from a sampler, redrawing chips with too much nodata.

    Calling it gives float32 images; :meth:`raw`, what loader workers call, keeps the files'
    own dtype where the dataset can (``raw_sample``, e.g. uint16 Sentinel-2 chips), for the
    device to cast. Both draw the same chips with the same pixels.

    Args:
        dataset: the TorchGeo dataset to read (its ``raw_sample``, if it has one, is what
            :meth:`raw` reads).
        sampler: the :class:`~geodino.samplers.AOISampler` placing the chips.
        nodata: the dataset's nodata value.
        max_nodata: largest fraction of nodata pixels a chip may hold.
        max_redraws: redraws before giving up with an error.
    """

    def __init__(
        self,
        dataset: GeoDataset,
        sampler: AOISampler,
        nodata: float | None,
        max_nodata: float = 0.25,
        max_redraws: int = 100,
    ) -> None:
        """Store what a draw needs; everything here is picklable for loader workers."""
        self.dataset = dataset
        self.sampler = sampler
        self.nodata = nodata
        self.max_nodata = max_nodata
        self.max_redraws = max_redraws
        # asked once: a protocol check per chip would cost more than the nodata test
        self.raw_sample = dataset.raw_sample if isinstance(dataset, RawSampleSource) else None

    def __call__(self, position: int) -> Sample:
        """Read the chip at ``position``, its image in float32.

        Args:
            position: global stream position.

        Returns:
            the sample, holding at most ``max_nodata`` nodata pixels.

        Raises:
            DataError: if every redraw held too much nodata.
        """
        sample = self.raw(position)
        image = sample["image"]
        if not image.is_floating_point():
            sample["image"] = torch.from_numpy(image.numpy().astype(np.float32))
        return sample

    def raw(self, position: int, out: np.ndarray | None = None) -> Sample:
        """Read the chip at ``position``, its image in the dtype the dataset reads it in.

        Args:
            position: global stream position.
            out: where the dataset may read the image (its ``raw_sample`` decides), e.g.
                the chip's slot in a batch.

        Returns:
            the sample, holding at most ``max_nodata`` nodata pixels; ``image.float()`` is
            what calling the draw returns.

        Raises:
            DataError: if every redraw held too much nodata.
        """
        raw_sample = self.raw_sample
        fractions = []
        for attempt in range(self.max_redraws + 1):
            query = self.sampler.sample(position, attempt)
            sample = self.dataset[query] if raw_sample is None else raw_sample(query, out=out)
            fraction = self._nodata_fraction(query, sample["image"])
            if fraction <= self.max_nodata:
                return sample
            fractions.append(fraction)
        x, y, _ = query
        files = ", ".join(self._files_at(query))
        raise DataError(
            f"{self.max_redraws + 1} chips drawn for stream position {position} all held more "
            f"than max_nodata={self.max_nodata} nodata (fractions {fractions[:5]}...); the last "
            f"lay at x {x.start:.1f}..{x.stop:.1f}, y {y.start:.1f}..{y.stop:.1f} "
            f"({self.dataset.crs}) in {files}, nodata value {self.nodata}. Draw chips inside "
            "the valid data (an AOI), raise max_nodata, or fix the files' nodata value."
        )

    def _nodata_fraction(self, query: Query, image: Tensor) -> float:
        """Fraction of the chip's pixels with no data in some band; refuses infinite values.

        Computed with numpy: on one chip these passes are ~50x faster than torch's threaded
        elementwise kernels, which dominated the per-chip cost. Integer chips are compared
        with the nodata value in their own dtype (no float copy); a value the dtype cannot
        hold marks no pixel, as in float32.
        """
        array = image.detach().cpu().numpy()
        if array.ndim == 4:
            # a time series (T, C, H, W): its padding steps (all NaN) hold no chip to judge;
            # a pixel counts as nodata where a band of any acquired date misses
            acquired = ~np.isnan(array).all(axis=(1, 2, 3))
            array = array[acquired].reshape(-1, *array.shape[-2:])
        nodata = self.nodata
        if array.dtype.kind in "iu":
            info = np.iinfo(array.dtype)
            if (
                nodata is None
                or not float(nodata).is_integer()
                or not info.min <= nodata <= info.max
            ):
                return 0.0
            # one min (or max) pass is ~3x faster than comparing and rules most chips out
            if array.min() > nodata or array.max() < nodata:
                return 0.0
            equal = array == array.dtype.type(nodata)
            return float(equal.any(axis=0).mean())
        invalid = None
        if array.dtype.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                if np.isinf(array).any():
                    self._refuse_inf(query, image)
                invalid = ~finite  # NaN is always nodata
        if nodata is not None and not np.isnan(nodata):
            equal = array == nodata
            invalid = equal if invalid is None else invalid | equal
        return 0.0 if invalid is None else float(invalid.any(axis=0).mean())

    def _files_at(self, query: Query) -> list[str]:
        """The files of the dataset's index under a query's footprint, for messages."""
        x, y, _ = query
        try:
            hits = self.dataset.index.cx[x.start : x.stop, y.start : y.stop]
            return sorted(set(hits["filepath"]))
        except (AttributeError, KeyError):  # a combined dataset indexes no single files
            return [f"the files of {type(self.dataset).__name__}"]

    def _refuse_inf(self, query: Query, image: Tensor) -> None:
        channels = range(image.shape[0])
        bands = self.dataset.band_names if isinstance(self.dataset, NamedBands) else list(channels)
        bad = [bands[i] for i in torch.isinf(image).flatten(1).any(1).nonzero().flatten()]
        x, y, _ = query
        raise DataError(
            f"infinite pixel values in bands {bad} of the chip at x {x.start:.1f}..{x.stop:.1f}, "
            f"y {y.start:.1f}..{y.stop:.1f}, read from {', '.join(self._files_at(query))}; "
            "set the files' nodata value to mark them (`gdal_edit.py -a_nodata`) or clean "
            "the rasters."
        )


class GeoDINODataModule(DINODataModule):
    """Chips from a TorchGeo raster dataset, optionally inside AOI polygons.

    For multimodal pretraining give a :class:`~geodino.datasets.PairedDataset` (e.g. Sentinel-2
    and Sentinel-1 intersected): its modalities' bands arrive stacked in one ``image`` on one
    pixel grid, ``band_groups`` says which bands belong to which modality, and multi-crop
    applies one crop geometry to all of them and each band the photometric operations of its
    kind (optical or SAR).

    Args:
        dataset: the raster dataset (e.g. :class:`~geodino.datasets.Sentinel2`, or a
            :class:`~geodino.datasets.PairedDataset` of several modalities).
        aoi: AOI file (GeoPackage, GeoJSON, Shapefile) or GeoDataFrame; None samples the whole
            data footprint.
        aoi_query: pandas query selecting training polygons (e.g. ``"split == 'train'"``).
        val_query: pandas query selecting validation polygons (needs ``aoi``); None draws
            validation chips from the training polygons with another seed.
        weight_column: AOI column weighting the polygons (default: their area).
        chip_size: chip side in pixels.
        min_coverage: least fraction of a chip inside the AOI.
        max_nodata: largest fraction of nodata pixels in a chip before it is redrawn.
        max_redraws: redraws of a chip before giving up with an error (a chip that lands in
            nodata with probability p fails all of them with probability p^(max_redraws+1)).
        batch_size: samples per batch on each device.
        num_workers: loader worker processes per device.
        seed: seed of the chip stream and of the augmentations.
        statistics: band statistics file; None measures them at set-up.
        statistics_chips: chips measured when no statistics file is given.
        multicrop: keyword arguments of :class:`~geodino.transforms.MultiCrop`.
        val_length: validation chips per device (0: no validation).
        block_aligned: align training and validation chips with the files' internal tiling
            (:class:`~geodino.samplers.AOISampler`): each chip decodes the fewest compressed
            blocks (one 256-px block for a 224-px chip instead of ~3.5 at a random offset),
            ~3x faster reads of tiled DEFLATE catalogs and COGs; chips then start at only a
            few offsets per block and pixels near block edges fall into fewer chips
            (docs/performance.md): worth it where reading bounds the step.
    """

    dataset: GeoDataset
    named_sources = "a geodino dataset (MultiBandGeoTIFF, Sentinel2, PairedDataset, ...)"

    def __init__(
        self,
        dataset: GeoDataset,
        aoi: str | Path | GeoDataFrame | None = None,
        aoi_query: str | None = None,
        val_query: str | None = None,
        weight_column: str | None = None,
        chip_size: int = 256,
        min_coverage: float = 1.0,
        max_nodata: float = 0.25,
        max_redraws: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        statistics: str | Path | None = None,
        statistics_chips: int = 256,
        multicrop: dict[str, Any] | None = None,
        val_length: int = 0,
        block_aligned: bool = False,
    ) -> None:
        """Store the settings; samplers are built in :meth:`setup`."""
        super().__init__(
            batch_size, num_workers, seed, statistics, statistics_chips, multicrop, val_length
        )
        if not 0.0 <= max_nodata <= 1.0:
            raise ConfigError(f"max_nodata must lie in [0, 1], got {max_nodata}.")
        if val_query is not None and aoi is None:
            raise ConfigError("val_query selects AOI polygons: give an aoi as well.")
        self.dataset = dataset
        self.aoi = aoi
        self.aoi_query = aoi_query
        self.val_query = val_query
        self.weight_column = weight_column
        self.chip_size = chip_size
        self.min_coverage = min_coverage
        self.max_nodata = max_nodata
        self.max_redraws = max_redraws
        self.block_aligned = block_aligned

    def _sampler(self, query: str | None, seed: int) -> AOISampler:
        return AOISampler(
            self.dataset,
            self.aoi,
            self.chip_size,
            min_coverage=self.min_coverage,
            weight_column=self.weight_column,
            generator=torch_generator(seed),
            query=query,
            block_aligned=self.block_aligned,
        )

    def _draw(self, sampler: AOISampler) -> GeoChipDraw:
        return GeoChipDraw(self.dataset, sampler, self.nodata, self.max_nodata, self.max_redraws)

    def setup_draws(self) -> None:
        """Build the training (and validation) samplers over the dataset."""
        if self.train_draw is None:
            self.train_draw = self._draw(self._sampler(self.aoi_query, self.seed))
        if self.val_draw is None and self.val_length > 0:
            query = self.val_query if self.val_query is not None else self.aoi_query
            self.val_draw = self._draw(self._sampler(query, self.seed + 1))
