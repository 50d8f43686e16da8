"""Checkpoints written atomically and read without unpickling code."""

import os
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geodino.weights_io import load_checkpoint

__all__ = ["AtomicModelCheckpoint", "SafeCheckpointIO", "load_checkpoint"]


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, writing each file to a temporary name then renaming it.

    A run killed while a checkpoint is being written leaves the previous file intact and, at
    worst, a ``.tmp`` file that is ignored and overwritten later.
    """

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, filepath)
            directory = os.open(os.path.dirname(os.path.abspath(filepath)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        trainer.strategy.barrier("AtomicModelCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, reading through :func:`load_checkpoint`.

    Resuming (``--ckpt_path``) then never unpickles code, whatever ``weights_only`` the caller
    or the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` variable asks for, and a truncated or
    malicious file is a :class:`~geodino.errors.WeightsError` naming it.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read a checkpoint with tensors and plain types only.

        Args:
            path: the checkpoint file.
            map_location: where to put the tensors (default: the CPU).
            weights_only: ignored: loading is always restricted to weights.

        Returns:
            the checkpoint.
        """
        return load_checkpoint(path, "cpu" if map_location is None else map_location)
