"""Lightning data modules: raw chips from workers, normalisation and multi-crop on the device.

Both modules feed training from an endless, seeded *sample stream*: the ``g``-th sample of
the stream is a pure function of the seed and ``g``, so a run resumes at the exact sample
where it stopped, on any number of devices and workers. Rank ``r`` of ``W`` takes stream
positions ``start + l * W + r`` for its local samples ``l = 0, 1, ...``, and loader workers
take whole local batches in turn, so the order does not depend on the worker count.
"""

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info
from torchgeo.datasets import GeoDataset

from geodino.errors import ConfigError, DataError
from geodino.transforms.normalize import (
    BandStatistics,
    Normalize,
    StatisticsAccumulator,
)

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity, where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


Sample = dict[str, Any]

#: Keys that travel from the workers to the device; everything else a dataset returns stays behind.
_BATCH_KEYS = ("image", "bounds", "label", "mask")


def _keep(sample: Sample) -> Sample:
    return {k: v for k, v in sample.items() if k in _BATCH_KEYS}


def collate(samples: list[Sample]) -> Sample:
    """Stack samples into a batch; in the main process with numpy.

    Loader workers use PyTorch's collate, which stacks straight into shared memory. In the
    main process (``num_workers=0``) numpy's single-threaded copy is ~10x faster than
    ``torch.stack`` on chip-sized tensors, which otherwise costs as much as decoding them.

    Args:
        samples: the samples of one batch.

    Returns:
        the batch.
    """
    first = samples[0]
    if get_worker_info() is not None or not all(
        isinstance(v, Tensor) and v.device.type == "cpu" for v in first.values()
    ):
        return default_collate(samples)
    return {k: torch.from_numpy(np.stack([s[k].numpy() for s in samples])) for k in first}


def _empty_batch(size: int, like: Tensor) -> Tensor:
    """An uninitialised batch of ``size`` tensors like ``like``; in a loader worker, in
    shared memory (as PyTorch's collate allocates it), so handing it over copies nothing.
    """
    shape = (size, *like.shape)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    storage = like._typed_storage()._new_shared(size * like.numel(), device=like.device)
    return like.new(storage).resize_(shape)


class SampleStream(IterableDataset[Sample]):
    """Endless (or bounded) stream of batches drawn by position, sharded over ranks and workers.

    Each item is a whole batch: the chips of a draw with a ``raw`` method are read straight
    into their slot of the batch (no per-chip array, no stacking copy), which is most of
    the loader's cost when the pixels already sit in GDAL's cache.

    Args:
        draw: returns the sample at a global stream position; its ``raw(position, out)``
            method, if it has one, is called instead (images in the files' dtype, read into
            ``out`` where it can; cast on the device).
        batch_size: samples per batch on one rank.
        start: first global position of this stream.
        rank: this process's rank.
        world_size: number of processes.
        length: samples per rank before the stream ends (None: endless).
    """

    def __init__(
        self,
        draw: Callable[[int], Sample],
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        length: int | None = None,
    ) -> None:
        """Store the stream's coordinates."""
        self.draw = draw
        self.batch_size = batch_size
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.length = length

    def positions(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """Global positions a worker draws, in order.

        Args:
            worker: the worker's id.
            num_workers: number of loader workers.

        Yields:
            global stream positions.
        """
        batch = worker
        while True:
            for j in range(self.batch_size):
                local = batch * self.batch_size + j
                if self.length is not None and local >= self.length:
                    return
                yield self.start + local * self.world_size + self.rank
            batch += num_workers

    def __iter__(self) -> Iterator[Sample]:
        """Draw this worker's batches."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        positions = self.positions(worker, workers)
        while batch := list(islice(positions, self.batch_size)):
            yield self.read_batch(batch)

    def read_batch(self, positions: list[int]) -> Sample:
        """The batch of samples at some stream positions.

        Images of different dtypes (uint16 chips read natively, float32 chips merged across
        files) are cast to their common dtype.

        Args:
            positions: global stream positions, in batch order.

        Returns:
            the batch.

        Raises:
            DataError: if a sample has no image, or the images differ in shape.
        """
        raw = getattr(self.draw, "raw", None)
        images: Tensor | None = None
        rest = []
        for i, position in enumerate(positions):
            if raw is None:
                sample = _keep(self.draw(position))
            else:
                sample = _keep(raw(position, out=None if images is None else images[i].numpy()))
            image = sample.pop("image", None)
            if not isinstance(image, Tensor):
                raise DataError(
                    f"the sample at stream position {position} has no image tensor (keys "
                    f"{sorted(sample)}); pretraining reads images: use an image dataset "
                    "(e.g. MultiBandGeoTIFF with is_image = True), not a mask dataset."
                )
            if images is None:
                images = _empty_batch(len(positions), image)
            if image.shape != images.shape[1:]:
                raise DataError(
                    f"the sample at stream position {position} has an image of shape "
                    f"{tuple(image.shape)}, the first of its batch {tuple(images.shape[1:])}; "
                    "samples of a batch must share band count and size: resize or crop the "
                    "images to one size, or select the same bands."
                )
            if image.data_ptr() != images[i].data_ptr():
                common = torch.promote_types(images.dtype, image.dtype)
                if common != images.dtype:
                    images = images.to(common)
                images[i] = image
            rest.append(sample)
        assert images is not None
        return (collate(rest) if rest[0] else {}) | {"image": images}

    def __len__(self) -> int:
        """Batches per rank (only defined for a bounded stream)."""
        if self.length is None:
            raise TypeError("an endless sample stream has no length")
        return -(-self.length // self.batch_size)


class GeoChipDraw:
    """Draws the chip at a stream position from a sampler, redrawing chips with too much nodata.

    Calling it gives float32 images; :meth:`raw`, what loader workers call, keeps the files'
    own dtype where the dataset can (``raw_sample``, e.g. uint16 Sentinel-2 chips), for the
    device to cast. Both draw the same chips with the same pixels.

    Args:
        dataset: the TorchGeo dataset to read.
        sampler: an :class:`~geodino.samplers.AOISampler` (any object with ``sample(i, attempt)``).
        nodata: the dataset's nodata value.
        max_nodata: largest fraction of nodata pixels a chip may hold.
        max_redraws: redraws before giving up with an error.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: Any,
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
        raw_sample = getattr(self.dataset, "raw_sample", None)
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

    def _nodata_fraction(self, query: Any, image: Tensor) -> float:
        """Fraction of the chip's pixels with no data in some band; refuses infinite values.

        Computed with numpy: on one chip these passes are ~50x faster than torch's threaded
        elementwise kernels, which dominated the per-chip cost. Integer chips are compared
        with the nodata value in their own dtype (no float copy); a value the dtype cannot
        hold marks no pixel, as in float32.
        """
        array = image.detach().cpu().numpy()
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

    def _files_at(self, query: Any) -> list[str]:
        """The files of the dataset's index under a query's footprint, for messages."""
        x, y, _ = query
        try:
            hits = self.dataset.index.cx[x.start : x.stop, y.start : y.stop]
            return sorted(set(hits["filepath"]))
        except (AttributeError, KeyError):  # a combined dataset indexes no single files
            return [f"the files of {type(self.dataset).__name__}"]

    def _refuse_inf(self, query: Any, image: torch.Tensor) -> None:
        bands = list(getattr(self.dataset, "band_names", range(image.shape[0])))
        bad = [bands[i] for i in torch.isinf(image).flatten(1).any(1).nonzero().flatten()]
        x, y, _ = query
        raise DataError(
            f"infinite pixel values in bands {bad} of the chip at x {x.start:.1f}..{x.stop:.1f}, "
            f"y {y.start:.1f}..{y.stop:.1f}, read from {', '.join(self._files_at(query))}; "
            "set the files' nodata value to mark them (`gdal_edit.py -a_nodata`) or clean "
            "the rasters."
        )


class IndexDraw:
    """Draws items of a map-style dataset in a fresh seeded permutation for every pass.

    Args:
        dataset: a map-style dataset.
        seed: seed of the permutations.
        shuffle: permute (True) or read in order (False).
    """

    def __init__(self, dataset: Dataset[Sample], seed: int, shuffle: bool = True) -> None:
        """Store the dataset and seed."""
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.size = len(dataset)  # type: ignore[arg-type]
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, position: int) -> int:
        """Dataset index at a stream position.

        Args:
            position: global stream position.

        Returns:
            the dataset index.
        """
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.size))
        return int(self._perm[1][offset])

    def __call__(self, position: int) -> Sample:
        """Read the item at a stream position.

        Args:
            position: global stream position.

        Returns:
            the sample.
        """
        return self.dataset[self.index(position)]


class DINODataModule(LightningDataModule):
    """What both data modules share: the sample streams, band statistics and device transforms.

    Subclasses build ``self.train_draw`` (and optionally ``self.val_draw``) in :meth:`setup`
    and say which bands they deliver.

    Args:
        batch_size: samples per batch on each device.
        num_workers: loader worker processes per device.
        seed: seed of the chip stream and of the augmentations.
        statistics: a band statistics file written by ``geodino stats``; None measures them
            on ``statistics_chips`` chips at set-up.
        statistics_chips: chips measured when no statistics file is given.
        multicrop: keyword arguments of :class:`~geodino.transforms.MultiCrop` (``preset``
            picks :meth:`~geodino.transforms.MultiCrop.from_preset`); None uses its defaults.
        val_length: validation samples per device (0: no validation).
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        statistics: str | Path | None = None,
        statistics_chips: int = 256,
        multicrop: dict[str, Any] | None = None,
        val_length: int = 0,
    ) -> None:
        """Store the settings; data are opened in :meth:`setup`."""
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        # more workers than cores only compete for them (and PyTorch warns at each loader)
        self.num_workers = min(num_workers, available_cpus())
        if self.num_workers < num_workers:
            log.info(
                "num_workers %d capped at the %d available cores", num_workers, self.num_workers
            )
        self.seed = seed
        self.statistics_path = statistics
        self.statistics_chips = statistics_chips
        self.multicrop_args = dict(multicrop or {})
        self.val_length = val_length
        self.train_draw: Callable[[int], Sample] | None = None
        self.val_draw: Callable[[int], Sample] | None = None
        self.statistics: BandStatistics | None = None
        self.normalize: Normalize | None = None
        self.multicrop: torch.nn.Module | None = None
        self._start = 0
        self._step_at_start = 0

    # --- what subclasses provide -------------------------------------------------------
    @property
    def band_names(self) -> list[str]:
        """Names of the bands delivered, in channel order."""
        raise TypeError(f"{type(self).__name__} must define band_names")

    @property
    def band_kinds(self) -> list[str]:
        """``"optical"`` or ``"sar"`` for each band, for the augmentations: the dataset's
        ``band_kinds`` (per band, e.g. a :class:`~geodino.datasets.PairedDataset`) or
        ``band_kind`` (all bands), else optical.
        """
        dataset = getattr(self, "dataset", None)
        kinds = getattr(dataset, "band_kinds", None)
        if kinds is not None:
            return list(kinds)
        return [getattr(dataset, "band_kind", "optical")] * len(self.band_names)

    @property
    def nodata(self) -> float | None:
        """Nodata value of the raw chips (NaN is always nodata)."""
        return None

    @property
    def band_groups(self) -> dict[str, int] | None:
        """Band count of each modality, in channel order (None: one modality).

        Multimodal data come as one ``image`` whose bands are the modalities' bands stacked
        in this order, so one multi-crop geometry serves every modality of a sample; a
        :class:`~geodino.models.FusionViT` with the same modalities splits them again. The
        dataset's ``band_groups`` (a :class:`~geodino.datasets.PairedDataset`), if it has them.
        """
        groups = getattr(getattr(self, "dataset", None), "band_groups", None)
        return None if groups is None else dict(groups)

    @property
    def num_bands(self) -> int:
        """Number of bands delivered."""
        return len(self.band_names)

    # --- set-up ------------------------------------------------------------------------
    def setup_draws(self) -> None:
        """Open the sources and build ``train_draw`` / ``val_draw`` (subclasses)."""
        raise TypeError(f"{type(self).__name__} must define setup_draws")

    def setup(self, stage: str) -> None:
        """Open the sources, then load or measure band statistics and build the transforms.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        self.setup_draws()
        self._setup_transforms()

    def _setup_transforms(self) -> None:
        if self.statistics is None:
            if self.statistics_path is not None:
                stats = BandStatistics.load(self.statistics_path)
                self.statistics = stats.select(self.band_names)
            else:
                self.statistics = self.measure_statistics(self.statistics_chips)
                log.info(
                    "measured band statistics on %d chips; write them once with "
                    "`geodino stats` and set data.statistics to skip this",
                    self.statistics_chips,
                )
        self.normalize = Normalize.from_statistics(self.statistics)
        self.normalize.nodata = self.nodata
        if self.multicrop is None:
            from geodino.transforms.multicrop import MultiCrop

            args = dict(self.multicrop_args)
            preset = args.pop("preset", None)
            args.setdefault("band_kinds", self.band_kinds)
            self.multicrop = MultiCrop.from_preset(preset, **args) if preset else MultiCrop(**args)

    def measure_statistics(self, chips: int) -> BandStatistics:
        """Per-band statistics of the first chips of the training stream.

        Args:
            chips: number of chips to measure.

        Returns:
            the statistics.
        """
        if self.train_draw is None:
            self.setup_draws()
        assert self.train_draw is not None
        acc = StatisticsAccumulator(self.band_names, self.nodata, seed=self.seed)
        for position in range(chips):
            acc.update(self.train_draw(position)["image"])
        return acc.compute(source=f"{chips} chips of {type(self).__name__}")

    # --- loaders -----------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, stream: SampleStream) -> DataLoader[Sample]:
        return DataLoader(
            stream,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # each new loader iterator draws a worker base seed: from its own generator, not
            # the global RNG, which checkpoints save and a resumed run must continue exactly
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Endless training stream, starting where the last checkpoint stopped."""
        if self.train_draw is None:
            self.setup("fit")
        rank, world = self._world()
        trainer = self.trainer
        self._step_at_start = trainer.global_step if trainer is not None else 0
        assert self.train_draw is not None
        return self._loader(
            SampleStream(self.train_draw, self.batch_size, self._start, rank, world)
        )

    def val_dataloader(self) -> DataLoader[Sample] | list[Any]:
        """A fixed set of ``val_length`` samples per device, the same at every validation."""
        if self.val_draw is None or self.val_length <= 0:
            return []
        rank, world = self._world()
        return self._loader(
            SampleStream(self.val_draw, self.batch_size, 0, rank, world, self.val_length)
        )

    # --- resumption --------------------------------------------------------------------
    def samples_seen(self) -> int:
        """Global stream position reached by the optimiser steps taken so far."""
        trainer = self.trainer
        if trainer is None:
            return self._start
        steps = trainer.global_step - self._step_at_start
        per_step = self.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        return self._start + steps * per_step

    def state_dict(self) -> dict[str, Any]:
        """Stream position, seed and band statistics, saved in every checkpoint."""
        state: dict[str, Any] = {"samples_seen": self.samples_seen(), "seed": self.seed}
        if self.statistics is not None:
            state["statistics"] = asdict(self.statistics)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the stream where the checkpoint stopped.

        Args:
            state_dict: what :meth:`state_dict` returned.
        """
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning(
                "resuming with data seed %s but the checkpoint used %s: the chip stream changes",
                self.seed,
                state_dict["seed"],
            )
        self._start = int(state_dict["samples_seen"])

    # --- on the device -----------------------------------------------------------------
    def augmentation_generator(self) -> torch.Generator:
        """CPU generator for this step's augmentations: a function of seed, step and rank.

        Returns:
            a seeded generator, so a resumed run draws the same crops.
        """
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        seed = int(np.random.SeedSequence([self.seed, step, rank]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def on_after_batch_transfer(self, batch: Sample, dataloader_idx: int) -> Sample:
        """Cast to float32, fill nodata, then multi-crop and normalise (training) or normalise.

        Loader batches hold the files' dtype where the dataset reads it natively (uint16 for
        Sentinel-2: half the bytes through the loader and the host-to-device copy); the cast
        happens here, on the device, and is exact.

        Args:
            batch: raw batch on the device.
            dataloader_idx: loader index.

        Returns:
            the batch; in training with ``global_crops`` and ``local_crops`` instead of
            ``image``.
        """
        if self.normalize is None:
            self._setup_transforms()
        assert self.normalize is not None and self.multicrop is not None
        self.normalize.to(batch["image"].device)
        image = batch["image"].float()
        if image.shape[1] != self.num_bands:
            raise DataError(
                f"batch has {image.shape[1]} bands but the data module declares "
                f"{self.num_bands} ({self.band_names}); check the dataset's bands."
            )
        image = self.normalize.fill_nodata(image)
        if not torch.isfinite(image).all():
            bad = (~torch.isfinite(image)).flatten(2).any(-1).any(0).nonzero().flatten()
            raise DataError(
                "batch holds inf values in bands "
                f"{[self.band_names[i] for i in bad.tolist()]}; set the files' nodata value "
                "or clean the rasters."
            )
        trainer = self.trainer
        if trainer is not None and trainer.training:
            crops = self.multicrop(image, generator=self.augmentation_generator())
            batch = {k: v for k, v in batch.items() if k != "image"}
            batch["global_crops"] = self.normalize(crops["global_crops"])
            batch["local_crops"] = self.normalize(crops["local_crops"])
        else:
            batch = dict(batch)
            batch["image"] = self.normalize(image)
        return batch


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

    def __init__(
        self,
        dataset: GeoDataset,
        aoi: str | Path | Any | None = None,
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

    @property
    def band_names(self) -> list[str]:
        """Names of the dataset's bands."""
        return list(self.dataset.band_names)

    @property
    def nodata(self) -> float | None:
        """The dataset's nodata value."""
        return getattr(self.dataset, "nodata", None)

    def _sampler(self, query: str | None, seed: int) -> Any:
        from geodino.samplers import AOISampler

        generator = torch.Generator().manual_seed(seed)
        return AOISampler(
            self.dataset,
            self.aoi,
            self.chip_size,
            min_coverage=self.min_coverage,
            weight_column=self.weight_column,
            generator=generator,
            query=query,
            block_aligned=self.block_aligned,
        )

    def _draw(self, sampler: Any) -> GeoChipDraw:
        return GeoChipDraw(self.dataset, sampler, self.nodata, self.max_nodata, self.max_redraws)

    def setup_draws(self) -> None:
        """Build the training (and validation) samplers over the dataset."""
        if self.train_draw is None:
            self.train_draw = self._draw(self._sampler(self.aoi_query, self.seed))
        if self.val_draw is None and self.val_length > 0:
            query = self.val_query if self.val_query is not None else self.aoi_query
            self.val_draw = self._draw(self._sampler(query, self.seed + 1))


class FolderDINODataModule(DINODataModule):
    """Samples from a non-geo dataset (``.npy`` folder, class folders, JSON-annotated images).

    Every item must have the same size; a fresh seeded permutation is drawn for each pass.

    Args:
        dataset: the map-style dataset (e.g. :class:`~geodino.datasets.NpyFolder`).
        val_dataset: optional dataset for validation.
        batch_size: samples per batch on each device.
        num_workers: loader worker processes per device.
        seed: seed of the sample stream and of the augmentations.
        statistics: band statistics file; None measures them at set-up.
        statistics_chips: samples measured when no statistics file is given.
        multicrop: keyword arguments of :class:`~geodino.transforms.MultiCrop`.
        val_length: validation samples per device (0: the whole validation dataset).
    """

    def __init__(
        self,
        dataset: Dataset,
        val_dataset: Dataset | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        statistics: str | Path | None = None,
        statistics_chips: int = 256,
        multicrop: dict[str, Any] | None = None,
        val_length: int = 0,
    ) -> None:
        """Store the settings."""
        super().__init__(
            batch_size, num_workers, seed, statistics, statistics_chips, multicrop, val_length
        )
        if len(dataset) == 0:
            raise DataError(f"{type(dataset).__name__} holds no samples.")
        self.dataset = dataset
        self.val_dataset = val_dataset
        if val_dataset is not None and val_length <= 0:
            self.val_length = len(val_dataset)

    @property
    def band_names(self) -> list[str]:
        """Names of the dataset's bands."""
        return list(self.dataset.band_names)

    @property
    def nodata(self) -> float | None:
        """The dataset's nodata value, if it has one."""
        return getattr(self.dataset, "nodata", None)

    def setup_draws(self) -> None:
        """Build the permuted training draw (and the in-order validation draw)."""
        if self.train_draw is None:
            self.train_draw = IndexDraw(self.dataset, self.seed)
        if self.val_draw is None and self.val_dataset is not None:
            self.val_draw = IndexDraw(self.val_dataset, self.seed, shuffle=False)
            self.val_length = min(self.val_length, len(self.val_dataset))

    def measure_statistics(self, chips: int) -> BandStatistics:
        """Statistics of up to ``chips`` samples (every sample if there are fewer).

        Args:
            chips: number of samples to measure.

        Returns:
            the statistics.
        """
        return super().measure_statistics(min(chips, len(self.dataset)))
