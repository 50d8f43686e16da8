"""The sample stream: batches drawn by stream position, sharded over ranks and workers.

The data modules feed training from an endless, seeded *sample stream*: the ``g``-th sample of
the stream is a pure function of the seed and ``g``, so a run resumes at the exact sample
where it stopped, on any number of devices and workers. Rank ``r`` of ``W`` takes stream
positions ``start + l * W + r`` for its local samples ``l = 0, 1, ...``, and loader workers
take whole local batches in turn, so the order does not depend on the worker count.
"""

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from geodino.datasets.protocols import Sample
from geodino.errors import DataError

#: Returns the sample at a global stream position.
Draw = Callable[[int], Sample]


@runtime_checkable
class RawDraw(Protocol):
    """A draw that can also read a sample in the files' own dtype, into a batch slot."""

    def __call__(self, position: int) -> Sample:
        """The sample at a global stream position, its image in float32."""
        ...

    def raw(self, position: int, out: np.ndarray | None = None) -> Sample:
        """The sample at a global stream position, its image in the files' dtype.

        Args:
            position: global stream position.
            out: where the image may be read (its slot in the batch).

        Returns:
            the sample; ``image.float()`` is what calling the draw returns.
        """
        ...


#: Keys that travel from the workers to the device; everything else a dataset returns stays behind.
_BATCH_KEYS = ("image", "bounds", "label", "mask", "doy")


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
        batch: Sample = default_collate(samples)
        return batch
    return {k: torch.from_numpy(np.stack([s[k].numpy() for s in samples])) for k in first}


def _empty_batch(size: int, like: Tensor) -> Tensor:
    """An uninitialised batch of ``size`` tensors like ``like``.

    In a loader worker the batch lies in shared memory (as PyTorch's collate allocates it),
    so handing it over copies nothing.
    """
    shape = (size, *like.shape)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    # torch leaves _typed_storage untyped
    typed = like._typed_storage()  # type: ignore[no-untyped-call]
    storage = typed._new_shared(size * like.numel(), device=like.device)
    batch: Tensor = like.new(storage).resize_(shape)
    return batch


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
        draw: Draw,
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
        raw = self.draw.raw if isinstance(self.draw, RawDraw) else None
        images: Tensor | None = None
        rest: list[Sample] = []
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
