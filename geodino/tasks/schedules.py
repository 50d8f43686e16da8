"""Iteration-based schedules of the DINOv2 recipe (learning rate, weight decay, momentum...)."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """Optional frozen phase, linear warmup, then cosine decay, as DINOv2's ``CosineScheduler``.

    The value is 0 for the first ``freeze_steps`` steps, rises linearly from ``start_warmup``
    to ``base`` over the next ``warmup_steps``, then follows a half cosine from ``base`` to
    ``final`` until ``total_steps``; later steps keep ``final``.

    Args:
        base: value after warmup.
        final: value at the last step.
        total_steps: length of the schedule in optimiser steps.
        warmup_steps: steps of linear warmup.
        start_warmup: value at the start of the warmup.
        freeze_steps: initial steps at 0 (before the warmup).
    """

    base: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    start_warmup: float = 0.0
    freeze_steps: int = 0

    def __call__(self, step: int) -> float:
        """Value at an optimiser step.

        Args:
            step: the step (0-based).

        Returns:
            the scheduled value.
        """
        if step < self.freeze_steps:
            return 0.0
        step -= self.freeze_steps
        if step < self.warmup_steps:
            return self.start_warmup + (self.base - self.start_warmup) * step / self.warmup_steps
        step -= self.warmup_steps
        cosine_steps = self.total_steps - self.freeze_steps - self.warmup_steps
        if cosine_steps <= 0 or step >= cosine_steps:
            return self.final
        return self.final + 0.5 * (self.base - self.final) * (
            1 + math.cos(math.pi * step / cosine_steps)
        )
