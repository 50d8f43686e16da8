"""What both pretraining data modules share: sample streams, band statistics, device transforms."""

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from geodino.datamodules.stream import Draw, SampleStream
from geodino.datasets.protocols import Multimodal, NamedBands, Sample, band_kinds_of, nodata_of
from geodino.errors import ConfigError, DataError
from geodino.seeding import derive_seed, torch_generator
from geodino.transforms.normalize import BandStatistics, Normalize, StatisticsAccumulator

if TYPE_CHECKING:
    from geodino.transforms.multicrop import MultiCrop

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity, where the platform tells it).

    Returns:
        the number of usable cores, at least 1.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class DINODataModule(LightningDataModule, ABC):
    """What both data modules share: the sample streams, band statistics and device transforms.

    Subclasses hold the source in ``dataset``, build ``train_draw`` (and optionally
    ``val_draw``) in :meth:`setup_draws` and say which bands they deliver.

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
        self.train_draw: Draw | None = None
        self.val_draw: Draw | None = None
        self.statistics: BandStatistics | None = None
        self.normalize: Normalize | None = None
        self.multicrop: MultiCrop | None = None
        self._start = 0
        self._step_at_start = 0

    # --- what subclasses provide -------------------------------------------------------
    #: the data source the subclass reads
    dataset: object
    #: the sources that name their bands, for the error when ``dataset`` does not
    named_sources: str = "a geodino dataset"

    @property
    def band_names(self) -> list[str]:
        """Names of the bands delivered, in channel order.

        Raises:
            ConfigError: if the dataset does not name its bands.
        """
        if not isinstance(self.dataset, NamedBands):
            raise ConfigError(
                f"{type(self.dataset).__name__} does not name its bands (band_names); use "
                f"{self.named_sources}."
            )
        return list(self.dataset.band_names)

    @property
    def band_kinds(self) -> list[str]:
        """``"optical"`` or ``"sar"`` for each band, for the augmentations.

        The dataset's ``band_kinds`` (per band, e.g. a :class:`~geodino.datasets.PairedDataset`) or
        ``band_kind`` (all bands), else optical.
        """
        return band_kinds_of(self.dataset, len(self.band_names))

    @property
    def nodata(self) -> float | None:
        """Nodata value of the raw chips, the dataset's (NaN is always nodata)."""
        return nodata_of(self.dataset)

    @property
    def band_groups(self) -> dict[str, int] | None:
        """Band count of each modality, in channel order (None: one modality).

        Multimodal data come as one ``image`` whose bands are the modalities' bands stacked
        in this order, so one multi-crop geometry serves every modality of a sample; a
        :class:`~geodino.models.FusionViT` with the same modalities splits them again. The
        dataset's ``band_groups`` (a :class:`~geodino.datasets.PairedDataset`), if it has them.
        """
        return dict(self.dataset.band_groups) if isinstance(self.dataset, Multimodal) else None

    @property
    def num_bands(self) -> int:
        """Number of bands delivered."""
        return len(self.band_names)

    # --- set-up ------------------------------------------------------------------------
    @abstractmethod
    def setup_draws(self) -> None:
        """Open the sources and build ``train_draw`` / ``val_draw``."""

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
            # imported here: kornia and torchvision load only when training starts
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
            generator=torch_generator(self.seed),
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
        return torch_generator(derive_seed(self.seed, step, rank))

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
            ``image``. Time series (``image`` (B, T, C, H, W) with ``doy`` (B, T)) give crops
            (n B, T, C, h, w) and keep ``doy``; padding steps (NaN) are filled like nodata.
        """
        if self.normalize is None:
            self._setup_transforms()
        assert self.normalize is not None and self.multicrop is not None
        self.normalize.to(batch["image"].device)
        image = batch["image"].float()  # (B, C, H, W), or (B, T, C, H, W) time series
        if image.shape[-3] != self.num_bands:
            raise DataError(
                f"batch has {image.shape[-3]} bands but the data module declares "
                f"{self.num_bands} ({self.band_names}); check the dataset's bands."
            )
        image = self.normalize.fill_nodata(image)
        if not torch.isfinite(image).all():
            bad = (~torch.isfinite(image)).flatten(-2).any(-1).flatten(0, -2).any(0)
            bad = bad.nonzero().flatten()
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
