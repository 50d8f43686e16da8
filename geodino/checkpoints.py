"""Checkpoints written atomically and read without unpickling code."""

import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geodino.errors import WeightsError


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


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint or weights file without running any code it may hold.

    Args:
        path: the file.
        map_location: where to put the tensors.

    Returns:
        the loaded object (a dict for checkpoints).

    Raises:
        WeightsError: if the file is missing, truncated, or would run code when unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise WeightsError(
            f"checkpoint {path} is empty (0 bytes): it was cut off while being written; "
            "resume from an earlier checkpoint."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise WeightsError(
                f"{path} holds pickled Python objects that would run code when loaded; "
                "geodino refuses such files. Re-save the weights as a plain state dict "
                "(tensors only) or as safetensors."
            ) from None
        raise WeightsError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {text.splitlines()[0]}); "
            "it is truncated or not a torch checkpoint. Resume from an earlier checkpoint."
        ) from None


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
