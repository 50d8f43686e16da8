"""Pretraining samples of map-style datasets: ``.npy`` and class folders, annotated images."""

from collections.abc import Sized
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from geodino.datamodules.base import DINODataModule
from geodino.datasets.protocols import Sample
from geodino.errors import ConfigError, DataError
from geodino.seeding import numpy_rng
from geodino.transforms.normalize import BandStatistics


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
        self.size = _length(dataset)
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
            rng = numpy_rng(self.seed, epoch)
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


def _length(dataset: Dataset[Sample]) -> int:
    """The number of items of a map-style dataset.

    Raises:
        ConfigError: if the dataset has no length.
    """
    if not isinstance(dataset, Sized):
        raise ConfigError(
            f"{type(dataset).__name__} has no length (__len__); give a map-style dataset "
            "such as NpyFolder, ImageFolder or AnnotatedImages."
        )
    return len(dataset)


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

    dataset: Dataset[Sample]
    named_sources = "a geodino folder dataset (NpyFolder, ImageFolder, AnnotatedImages)"

    def __init__(
        self,
        # bare Dataset: jsonargparse resolves the class_path of a config only for a plain class
        dataset: Dataset,  # type: ignore[type-arg]
        val_dataset: Dataset | None = None,  # type: ignore[type-arg]
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
        if _length(dataset) == 0:
            raise DataError(f"{type(dataset).__name__} holds no samples.")
        self.dataset = dataset
        self.val_dataset = val_dataset
        if val_dataset is not None and val_length <= 0:
            self.val_length = _length(val_dataset)

    def setup_draws(self) -> None:
        """Build the permuted training draw (and the in-order validation draw)."""
        if self.train_draw is None:
            self.train_draw = IndexDraw(self.dataset, self.seed)
        if self.val_draw is None and self.val_dataset is not None:
            self.val_draw = IndexDraw(self.val_dataset, self.seed, shuffle=False)
            self.val_length = min(self.val_length, _length(self.val_dataset))

    def measure_statistics(self, chips: int) -> BandStatistics:
        """Statistics of up to ``chips`` samples (every sample if there are fewer).

        Args:
            chips: number of samples to measure.

        Returns:
            the statistics.
        """
        return super().measure_statistics(min(chips, _length(self.dataset)))
