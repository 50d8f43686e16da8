"""Test-only Lightning plugins that SIGKILL the ``geodino fit`` process at chosen moments.

They are named in a test config (``trainer.callbacks`` / ``trainer.plugins``) and imported by
the subprocess through ``PYTHONPATH``; nothing here is mocked: the process really dies.
"""

import io
import os
import signal
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from geodino.checkpoints import SafeCheckpointIO


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillMidStep(Callback):
    """SIGKILL after the backward pass of step ``step``, before its optimiser update.

    Args:
        step: the global step to die in.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        """Die in the middle of the step."""
        if trainer.global_step == self.step:
            _die()


class KillInValidation(Callback):
    """SIGKILL after the first validation batch that follows step ``step``.

    Args:
        step: the global step after which validation is interrupted.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """Die inside the validation loop."""
        if trainer.global_step >= self.step and not trainer.sanity_checking:
            _die()


class TornWriteCheckpointIO(SafeCheckpointIO):
    """Writes the checkpoint of step ``step`` half-way to disk, then SIGKILLs the process.

    The file written is the real serialised checkpoint cut in the middle and fsynced, as a
    power cut or OOM kill during ``torch.save`` leaves it.

    Args:
        step: the global step whose checkpoint write is interrupted.
    """

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Save normally, except at ``step``: write half the bytes and die."""
        if checkpoint.get("global_step") != self.step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        _die()
