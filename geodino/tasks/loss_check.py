"""The check that a training step's losses are finite, read back from the device in batches."""

from collections.abc import Mapping

import torch
from torch import Tensor


class DeferredLossCheck:
    """The scalar losses of the steps since the last read, checked for NaN/inf in one read.

    On an accelerator, reading a value back (``float(loss)``, ``if not torch.isfinite(loss)``)
    waits for every kernel queued before it, so a check every step would keep the host from
    running ahead of the device. The task pushes each step's scalars here (detached device
    tensors) and reads them all at once every ``every_n_steps`` steps, before a checkpoint
    is written and when fitting ends; on the CPU a read costs nothing and happens every step.
    A non-finite loss is thus reported with the step where it appeared, and never reaches a
    checkpoint.

    Args:
        every_n_steps: steps between reads on an accelerator.
        every_step_on_cpu: read every step when the losses live on the CPU.
    """

    def __init__(self, every_n_steps: int = 25, every_step_on_cpu: bool = True) -> None:
        """Start with nothing pending."""
        self.every_n_steps = max(1, every_n_steps)
        self.every_step_on_cpu = every_step_on_cpu
        self._pending: list[tuple[int, dict[str, Tensor]]] = []

    def push(self, step: int, parts: Mapping[str, Tensor]) -> None:
        """Keep one step's scalar losses (``loss`` among them) until the next read.

        Args:
            step: the optimiser step.
            parts: scalar tensors of the step; stored detached.
        """
        self._pending.append((step, {k: v.detach() for k, v in parts.items()}))

    @property
    def due(self) -> bool:
        """Whether the pending values should be read now."""
        if not self._pending:
            return False
        on_cpu = self._pending[-1][1]["loss"].device.type == "cpu"
        return (on_cpu and self.every_step_on_cpu) or len(self._pending) >= self.every_n_steps

    def read(self) -> float | None:
        """Read the pending losses back (one transfer) and forget them.

        Returns:
            the last pending step's loss; None if nothing was pending.

        Raises:
            FloatingPointError: naming the first step whose loss is NaN or infinite, with its
                parts.
        """
        if not self._pending:
            return None
        losses = torch.stack([parts["loss"].float() for _, parts in self._pending]).cpu()
        pending, self._pending = self._pending, []
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            step, parts = pending[int((~finite).nonzero()[0, 0])]
            values = {k: float(v) for k, v in parts.items()}
            raise FloatingPointError(
                f"non-finite loss at step {step}: {values}. The last good checkpoint is "
                "intact; lower base_lr, raise warmup_fraction, use fp32/bf16 instead of "
                "fp16, or check the band statistics."
            )
        return float(losses[-1])
