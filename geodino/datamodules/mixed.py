"""Mixed-sensor pretraining: chips from several sources with different band sets.

One run draws from several sources (e.g. Sentinel-2, Sentinel-1 and an 8-band commercial
catalog), each with a sampling weight, for a wavelength-aware backbone
(:class:`~geodino.models.SpectralViT`). Every batch comes from one source, drawn per step
(as Clay's sampler does): its chips keep their own bands, so a batch costs what its bands
cost, where padding every chip to the union of all bands costs the union's for every chip
(docs/any-sensor.md measures both). Batches carry the identity of each band (``band_ids``:
centre wavelength in nm, or a SAR polarisation's id) and, in training, a band mask per crop:
spectral multi-crop hides random subsets of bands from the views.

The source of a step is a function of the seed and the step's first global stream position,
the same on every rank, and each source's chips are functions of the position, so a run
resumes at the exact chip where it stopped and ranks shard the stream as for one source.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from geopandas import GeoDataFrame
from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset

from geodino.bands import band_identities
from geodino.datamodules.base import DINODataModule
from geodino.datamodules.geo import GeoChipDraw
from geodino.datamodules.stream import Draw, SampleStream
from geodino.datasets.protocols import NamedBands, Sample, band_kinds_of, nodata_of
from geodino.datasets.sentinel import Sentinel1, Sentinel2
from geodino.errors import ConfigError, DataError
from geodino.samplers import AOISampler
from geodino.seeding import derive_seed, numpy_rng, torch_generator
from geodino.transforms.normalize import BandStatistics, Normalize, StatisticsAccumulator
from geodino.transforms.spectral import draw_band_masks, sensor_band_sets

log = logging.getLogger(__name__)


@runtime_checkable
class SensorSource(Protocol):
    """A source that says which sensor's band table names its bands."""

    #: a key of :data:`geodino.bands.SENSOR_BANDS`
    sensor: str


def sensor_of(dataset: object) -> str | None:
    """The sensor whose band table names a source's bands, None when it does not say.

    Args:
        dataset: a source.

    Returns:
        ``sentinel2`` and ``sentinel1`` for geodino's Sentinel sources, a
        :class:`SensorSource`'s ``sensor``, else None.
    """
    if isinstance(dataset, Sentinel2):
        return "sentinel2"
    if isinstance(dataset, Sentinel1):
        return "sentinel1"
    return dataset.sensor if isinstance(dataset, SensorSource) else None


class MixedSampleStream(SampleStream):
    """A sample stream whose every batch comes from one of several sources.

    The source of a batch is drawn with the sources' weights from the seed and the step
    ``(first position - rank) // (batch_size * world_size)``, which every rank computes alike.

    Args:
        draws: each source's draw.
        weights: each source's sampling weight (normalised here).
        seed: seed of the source draws.
        batch_size: samples per batch on one rank.
        start: first global position of this stream.
        rank: this process's rank.
        world_size: number of processes.
        length: samples per rank before the stream ends (None: endless).
    """

    def __init__(
        self,
        draws: Sequence[Draw],
        weights: Sequence[float],
        seed: int,
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        length: int | None = None,
    ) -> None:
        """Store the sources and the stream's coordinates."""
        super().__init__(draws[0], batch_size, start, rank, world_size, length)
        self.draws = list(draws)
        total = float(sum(weights))
        self.weights = np.array([w / total for w in weights])
        self.seed = seed

    def source_of(self, position: int) -> int:
        """The source of the batch that starts at a global stream position on this rank.

        Args:
            position: the batch's first position.

        Returns:
            the source's index.
        """
        step = (position - self.rank) // (self.batch_size * self.world_size)
        return int(numpy_rng(self.seed, step).choice(len(self.draws), p=self.weights))

    def read_batch(self, positions: list[int]) -> Sample:
        """The batch at some stream positions, all read from the source of the first.

        Args:
            positions: global stream positions, in batch order.

        Returns:
            the batch, with ``source`` (the source's index, an int).
        """
        source = self.source_of(positions[0])
        batch = SampleStream(self.draws[source], self.batch_size).read_batch(positions)
        batch["source"] = source
        return batch


class MixedGeoDataModule(DINODataModule):
    """Chips from several TorchGeo raster sources with different band sets, one source a batch.

    The data module's bands are the union of the sources' bands (a band that two sources
    share by name must have one identity); ``band_names``, the statistics and the band
    identities cover them all, and each batch holds its source's bands only.

    Args:
        datasets: the sources (e.g. :class:`~geodino.datasets.Sentinel2`,
            :class:`~geodino.datasets.Sentinel1`, a :class:`~geodino.datasets.MultiBandGeoTIFF`
            of an 8-band sensor).
        weights: sampling weight of each source (default: equal).
        sensors: the sensor of each source (keys of :data:`geodino.bands.SENSOR_BANDS`, None
            to take the source's own: Sentinel sources and sources with a ``sensor`` say it,
            others are looked up by band name).
        band_wavelengths: more ``{band name: centre wavelength in nm}`` for bands no table
            has.
        spectral_subsets: chance that a crop sees a subset of its bands (0: every crop sees
            all of them).
        sensor_subsets: chance that such a subset is what another sensor of the band table
            (``geodino.bands.SENSOR_BANDS``) records of the source's bands (a Sentinel-2 crop
            as PlanetScope, Landsat or WorldView-3 sees it; 0: always a random subset).
        min_bands: fewest bands a crop keeps.
        teacher_all_bands: the teacher's global crops keep all their bands, only the
            student's crops draw subsets (Panopticon's recipe: the student learns to embed a
            subset as the teacher embeds the whole scene); False hides the same bands from
            the teacher's global crops as from the student's.
        aoi: AOI file or GeoDataFrame shared by the sources; None samples each source's
            footprint.
        aoi_query: pandas query selecting training polygons.
        val_query: pandas query selecting validation polygons (needs ``aoi``).
        weight_column: AOI column weighting the polygons (default: their area).
        chip_size: chip side in pixels.
        min_coverage: least fraction of a chip inside the AOI.
        max_nodata: largest fraction of nodata pixels in a chip before it is redrawn.
        max_redraws: redraws of a chip before giving up with an error.
        batch_size: samples per batch on each device.
        num_workers: loader worker processes per device.
        seed: seed of the chip stream, the source draws and the augmentations.
        statistics: band statistics file covering every source's bands; None measures them
            at set-up.
        statistics_chips: chips of each source measured when no statistics file is given.
        multicrop: keyword arguments of :class:`~geodino.transforms.MultiCrop` (each source's
            band kinds are added).
        val_length: validation chips per device (0: no validation).
        block_aligned: align chips with the files' internal tiling.
    """

    named_sources = "geodino datasets (MultiBandGeoTIFF, Sentinel2, Sentinel1, ...)"

    def __init__(
        self,
        datasets: list[GeoDataset],
        weights: list[float] | None = None,
        sensors: list[str | None] | None = None,
        band_wavelengths: dict[str, float] | None = None,
        spectral_subsets: float = 0.5,
        sensor_subsets: float = 0.5,
        min_bands: int = 1,
        teacher_all_bands: bool = True,
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
        """Check the sources and resolve their band identities; samplers come in setup."""
        super().__init__(
            batch_size, num_workers, seed, statistics, statistics_chips, multicrop, val_length
        )
        if not datasets:
            raise ConfigError("datasets is empty; give the sources to pretrain on.")
        weights = [1.0] * len(datasets) if weights is None else list(weights)
        sensors = [None] * len(datasets) if sensors is None else list(sensors)
        if len(weights) != len(datasets) or len(sensors) != len(datasets):
            raise ConfigError(
                f"{len(datasets)} datasets but {len(weights)} weights and {len(sensors)} "
                "sensors; give one weight (and one sensor or null) per dataset."
            )
        if any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"weights {weights} must be >= 0 with a positive sum.")
        if not 0.0 <= max_nodata <= 1.0:
            raise ConfigError(f"max_nodata must lie in [0, 1], got {max_nodata}.")
        if val_query is not None and aoi is None:
            raise ConfigError("val_query selects AOI polygons: give an aoi as well.")
        draw_band_masks(0, 1, spectral_subsets, min_bands, sensor_share=sensor_subsets)
        self.datasets = list(datasets)
        self.dataset = self.datasets[0]
        self.weights = weights
        self.spectral_subsets = spectral_subsets
        self.sensor_subsets = sensor_subsets
        self.min_bands = min_bands
        self.teacher_all_bands = teacher_all_bands
        self.aoi = aoi
        self.aoi_query = aoi_query
        self.val_query = val_query
        self.weight_column = weight_column
        self.chip_size = chip_size
        self.min_coverage = min_coverage
        self.max_nodata = max_nodata
        self.max_redraws = max_redraws
        self.block_aligned = block_aligned
        self.source_bands: list[list[str]] = []
        self.source_ids: list[list[float]] = []
        identity: dict[str, float] = {}
        for i, dataset in enumerate(self.datasets):
            if not isinstance(dataset, NamedBands):
                raise ConfigError(
                    f"dataset {i} ({type(dataset).__name__}) does not name its bands; use "
                    f"{self.named_sources}."
                )
            names = list(dataset.band_names)
            sensor = sensors[i] or sensor_of(dataset)
            try:
                ids = band_identities(
                    names, sensor, band_wavelengths, f"dataset {i} ({type(dataset).__name__})"
                )
            except ValueError as error:
                raise ConfigError(str(error)) from None
            for name, value in zip(names, ids, strict=True):
                if identity.setdefault(name, value) != value:
                    raise ConfigError(
                        f"band {name!r} of dataset {i} ({type(dataset).__name__}) is "
                        f"{value:g} but another source's {name!r} is {identity[name]:g}; "
                        "rename the bands of one source (band_names) so that one name means "
                        "one band."
                    )
            self.source_bands.append(names)
            self.source_ids.append(ids)
        self.source_subsets = [sensor_band_sets(ids, min_bands) for ids in self.source_ids]
        self._identity = identity
        self.draws: list[GeoChipDraw] = []
        self.val_draws: list[GeoChipDraw] = []
        self.normalizers: list[Normalize] = []
        self.multicrops: list[Any] = []

    # --- bands -------------------------------------------------------------------------
    @property
    def band_names(self) -> list[str]:
        """Every source's bands, in order of first appearance."""
        return list(self._identity)

    @property
    def band_ids(self) -> list[float]:
        """The identity of each of :attr:`band_names` (nm, or a SAR polarisation's id)."""
        return list(self._identity.values())

    @property
    def band_kinds(self) -> list[str]:
        """``optical`` or ``sar`` for each of :attr:`band_names`."""
        kinds: dict[str, str] = {}
        for dataset, names in zip(self.datasets, self.source_bands, strict=True):
            kinds.update(zip(names, band_kinds_of(dataset, len(names)), strict=True))
        return [kinds[name] for name in self.band_names]

    @property
    def band_groups(self) -> None:
        """None: the sources are not modalities of one sample."""
        return None

    # --- set-up ------------------------------------------------------------------------
    def _draw(self, index: int, query: str | None, seed: int) -> GeoChipDraw:
        dataset = self.datasets[index]
        sampler = AOISampler(
            dataset,
            self.aoi,
            self.chip_size,
            min_coverage=self.min_coverage,
            weight_column=self.weight_column,
            generator=torch_generator(derive_seed(seed, index)),
            query=query,
            block_aligned=self.block_aligned,
        )
        return GeoChipDraw(dataset, sampler, nodata_of(dataset), self.max_nodata, self.max_redraws)

    def setup_draws(self) -> None:
        """Build each source's training (and validation) sampler."""
        if not self.draws:
            self.draws = [
                self._draw(i, self.aoi_query, self.seed) for i in range(len(self.datasets))
            ]
            self.train_draw = self.draws[0]
        if not self.val_draws and self.val_length > 0:
            query = self.val_query if self.val_query is not None else self.aoi_query
            self.val_draws = [
                self._draw(i, query, self.seed + 1) for i in range(len(self.datasets))
            ]
            self.val_draw = self.val_draws[0]

    def measure_statistics(self, chips: int) -> BandStatistics:
        """Per-band statistics of every source, each measured on its first ``chips`` chips.

        Args:
            chips: chips measured per source.

        Returns:
            the statistics of :attr:`band_names` (a band shared by sources: its first's).
        """
        if not self.draws:
            self.setup_draws()
        measured: dict[str, tuple[float, float, float | None, float | None]] = {}
        pixels = 0
        for i, (draw, names) in enumerate(zip(self.draws, self.source_bands, strict=True)):
            acc = StatisticsAccumulator(names, nodata_of(self.datasets[i]), seed=self.seed)
            for position in range(chips):
                acc.update(draw(position)["image"])
            stats = acc.compute(source=f"{chips} chips of source {i}")
            pixels += stats.pixels
            for j, name in enumerate(names):
                p2 = stats.p2[j] if stats.p2 else None
                p98 = stats.p98[j] if stats.p98 else None
                measured.setdefault(name, (stats.mean[j], stats.std[j], p2, p98))
        rows = [measured[name] for name in self.band_names]
        percentiles = all(r[2] is not None and r[3] is not None for r in rows)
        return BandStatistics(
            self.band_names,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [float(r[2]) for r in rows if r[2] is not None] if percentiles else [],
            [float(r[3]) for r in rows if r[3] is not None] if percentiles else [],
            None,
            pixels,
            f"{chips} chips of each of {len(self.datasets)} sources of {type(self).__name__}",
        )

    def _setup_transforms(self) -> None:
        if self.statistics is None:
            if self.statistics_path is not None:
                self.statistics = BandStatistics.load(self.statistics_path).select(self.band_names)
            else:
                self.statistics = self.measure_statistics(self.statistics_chips)
        if not self.normalizers:
            for dataset, names in zip(self.datasets, self.source_bands, strict=True):
                normalize = Normalize.from_statistics(self.statistics.select(names))
                normalize.nodata = nodata_of(dataset)
                self.normalizers.append(normalize)
        if not self.multicrops:
            from geodino.transforms.multicrop import MultiCrop

            args = dict(self.multicrop_args)
            preset = args.pop("preset", None)
            for dataset, names in zip(self.datasets, self.source_bands, strict=True):
                source_args = {"band_kinds": band_kinds_of(dataset, len(names)), **args}
                self.multicrops.append(
                    MultiCrop.from_preset(preset, **source_args)
                    if preset
                    else MultiCrop(**source_args)
                )
        self.normalize, self.multicrop = self.normalizers[0], self.multicrops[0]

    # --- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader[Sample]:
        """Endless stream of one-source batches, starting where the last checkpoint stopped."""
        if not self.draws:
            self.setup("fit")
        rank, world = self._world()
        trainer = self.trainer
        self._step_at_start = trainer.global_step if trainer is not None else 0
        stream = MixedSampleStream(
            self.draws, self.weights, self.seed, self.batch_size, self._start, rank, world
        )
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader[Sample] | list[Any]:
        """A fixed set of ``val_length`` one-source batches per device."""
        if not self.val_draws or self.val_length <= 0:
            return []
        rank, world = self._world()
        stream = MixedSampleStream(
            self.val_draws,
            self.weights,
            self.seed + 1,
            self.batch_size,
            0,
            rank,
            world,
            self.val_length,
        )
        return self._loader(stream)

    # --- on the device -----------------------------------------------------------------
    def band_mask_generator(self) -> torch.Generator:
        """CPU generator of this step's band subsets: a function of seed, step and rank.

        Returns:
            a seeded generator, apart from the augmentations' one.
        """
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        return torch_generator(derive_seed(self.seed, step, rank, 1))

    def on_after_batch_transfer(self, batch: Sample, dataloader_idx: int) -> Sample:
        """Normalise with the batch's source, multi-crop it and draw band subsets (training).

        Args:
            batch: raw one-source batch on the device, with ``source``.
            dataloader_idx: loader index.

        Returns:
            the batch with ``band_ids`` (C,) and, in training, ``global_crops``,
            ``local_crops``, ``global_band_mask`` and ``local_band_mask`` (True for a band
            hidden from a crop) instead of ``image``, and ``teacher_band_mask`` (the
            teacher's global crops) with ``teacher_all_bands``.

        Raises:
            DataError: for a batch without a source or with bands other than its source's.
        """
        if not self.normalizers:
            self._setup_transforms()
        source = batch.get("source")
        if not isinstance(source, int) or not 0 <= source < len(self.datasets):
            raise DataError(
                f"batch source {source!r} is not one of the {len(self.datasets)} sources; "
                f"{type(self).__name__} takes the batches of its own loaders."
            )
        names = self.source_bands[source]
        image = batch["image"].float()
        if image.shape[1] != len(names):
            raise DataError(
                f"batch of source {source} has {image.shape[1]} bands but the source "
                f"declares {len(names)} ({names}); check the dataset's bands."
            )
        normalize = self.normalizers[source].to(image.device)
        image = normalize.fill_nodata(image)
        if not torch.isfinite(image).all():
            raise DataError(
                f"batch of source {source} holds inf values; set the files' nodata value or "
                "clean the rasters."
            )
        out = {k: v for k, v in batch.items() if k != "image"}
        out["band_ids"] = torch.tensor(self.source_ids[source], device=image.device)
        trainer = self.trainer
        if trainer is None or not trainer.training:
            out["image"] = normalize(image)
            return out
        crops = self.multicrops[source](image, generator=self.augmentation_generator())
        generator = self.band_mask_generator()
        for kind in ("global", "local"):
            views = crops[f"{kind}_crops"]
            out[f"{kind}_crops"] = normalize(views) if views.ndim == 4 else views
            count = views.shape[0] if views.ndim == 4 else 0
            out[f"{kind}_band_mask"] = draw_band_masks(
                count,
                len(names),
                self.spectral_subsets,
                self.min_bands,
                generator,
                self.source_subsets[source],
                self.sensor_subsets,
            ).to(image.device)
        if self.teacher_all_bands:
            out["teacher_band_mask"] = torch.zeros_like(out["global_band_mask"])
        return out


__all__ = ["MixedGeoDataModule", "MixedSampleStream", "SensorSource", "sensor_of"]
