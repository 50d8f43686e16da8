"""A guard that notices when DINOv2 pretraining collapses, says so, and can stop the run.

DINO-style self-distillation has two trivial solutions (Caron et al. 2021, section 5.3):
*uniform* collapse, where the teacher gives every input the same flat distribution over
the prototypes (the target entropy reaches its maximum log K), and *representation*
collapse, where the backbone maps every input to nearly the same feature (the spread of the
teacher's CLS features across a batch falls towards zero). Either way the loss still looks
ordinary, and the features are worth no more than random initialisation. The guard reads
the two figures the task logs, ``train/teacher_entropy`` and ``train/teacher_feature_std``.
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from geodino.errors import CollapseError, ConfigError

log = logging.getLogger(__name__)

#: The logged figures the guard reads.
ENTROPY_KEY = "train/teacher_entropy"
SPREAD_KEY = "train/teacher_feature_std"

#: What usually brings a collapsing DINOv2 run back, for the warning.
REMEDIES = (
    "lower model.init_args.base_lr (e.g. halve it) or raise warmup_fraction",
    "centering: sinkhorn_knopp where softmax centring collapses",
    "warm the teacher temperature up (warmup_teacher_temp 0.04 -> teacher_temp over "
    "teacher_temp_warmup_fraction)",
    "koleo_loss_weight: 0.1 to keep the features of a batch apart",
    "a bigger batch (data.init_args.batch_size)",
    "a slower teacher (momentum_teacher closer to 1)",
)


@dataclass
class CollapseCheck:
    """The collapse figures at one check.

    Args:
        step: optimiser step.
        entropy: teacher target entropy (nats).
        entropy_ratio: entropy / log K (1 = uniform targets).
        feature_std: spread of the teacher's L2-normalised CLS features over the batch.
        spread_ratio: ``feature_std`` over the largest value seen at a check so far.
        collapsed: whether this check crossed a threshold.
    """

    step: int
    entropy: float
    entropy_ratio: float
    feature_std: float
    spread_ratio: float
    collapsed: bool


class CollapseGuard(Callback):
    """Watches the teacher's target entropy and feature spread for collapse.

    Every ``check_every_n_steps`` optimiser steps (the only steps where it reads the logged
    values back from the device) a check counts as collapsed when the teacher's targets are
    nearly uniform (entropy >= ``max_entropy_ratio`` x log K, K the number of prototypes) or
    its feature spread has fallen to ``min_spread_ratio`` of the largest spread seen at an
    earlier check. After ``patience`` collapsed checks in a row, none before ``min_step``,
    the guard logs a WARNING with the figures, the step and the usual remedies, records
    "collapsed at step N" in ``metrics.json`` (section ``collapse``) and, with
    ``stop_on_collapse``, stops the run with :class:`~geodino.errors.CollapseError`; the
    checkpoints written so far are left as they are. A run that ends without that is
    "healthy". ``DINOv2Task`` adds a guard with these defaults to every run; give one in
    ``trainer.callbacks`` to change them, or ``enabled: false`` to switch it off.

    Args:
        enabled: False turns the guard off.
        stop_on_collapse: raise :class:`~geodino.errors.CollapseError` at the collapse.
        check_every_n_steps: optimiser steps between checks.
        patience: collapsed checks in a row that make a collapse.
        min_step: first step that may be judged (early training is often near-uniform).
        max_entropy_ratio: target entropy over log K at or above which targets are uniform.
        min_spread_ratio: feature spread over its peak at or below which features collapsed.
        num_prototypes: K; None reads ``head_out_dim`` from the task's hyperparameters.
    """

    summary_key = "collapse"

    def __init__(
        self,
        enabled: bool = True,
        stop_on_collapse: bool = False,
        check_every_n_steps: int = 25,
        patience: int = 4,
        min_step: int = 200,
        max_entropy_ratio: float = 0.98,
        min_spread_ratio: float = 0.2,
        num_prototypes: int | None = None,
    ) -> None:
        """Keep the settings; the number of prototypes is read when fitting starts."""
        if check_every_n_steps < 1 or patience < 1:
            raise ConfigError(
                f"CollapseGuard: check_every_n_steps={check_every_n_steps} and "
                f"patience={patience} must be >= 1."
            )
        if not 0.0 < max_entropy_ratio <= 1.0 or not 0.0 <= min_spread_ratio < 1.0:
            raise ConfigError(
                f"CollapseGuard: max_entropy_ratio={max_entropy_ratio} must lie in (0, 1] and "
                f"min_spread_ratio={min_spread_ratio} in [0, 1)."
            )
        self.enabled = enabled
        self.stop_on_collapse = stop_on_collapse
        self.check_every_n_steps = check_every_n_steps
        self.patience = patience
        self.min_step = min_step
        self.max_entropy_ratio = max_entropy_ratio
        self.min_spread_ratio = min_spread_ratio
        self.num_prototypes = num_prototypes
        self.checks: list[CollapseCheck] = []
        self.peak_spread = 0.0
        self.streak = 0
        self.collapsed_at: int | None = None

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checks so far, the peak spread, the streak and the verdict (kept on resume)."""
        return {
            "checks": [asdict(c) for c in self.checks],
            "peak_spread": self.peak_spread,
            "streak": self.streak,
            "collapsed_at": self.collapsed_at,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: the saved state.
        """
        self.checks = [CollapseCheck(**c) for c in state_dict.get("checks", [])]
        self.peak_spread = float(state_dict.get("peak_spread", 0.0))
        self.streak = int(state_dict.get("streak", 0))
        self.collapsed_at = state_dict.get("collapsed_at")

    # --- verdict -----------------------------------------------------------------------
    @property
    def verdict(self) -> str:
        """``healthy``, ``collapsed at step N``, ``not checked`` or ``not judged ...``."""
        if not self.enabled:
            return "not checked"
        if self.collapsed_at is not None:
            return f"collapsed at step {self.collapsed_at}"
        if not any(c.step >= self.min_step for c in self.checks):
            return f"not judged (no check at or after step {self.min_step})"
        return "healthy"

    def summary(self) -> dict[str, Any]:
        """The verdict, the last check and the thresholds, for ``metrics.json``."""
        return {
            "verdict": self.verdict,
            "collapsed_at": self.collapsed_at,
            "last_check": asdict(self.checks[-1]) if self.checks else None,
            "thresholds": {
                "max_entropy_ratio": self.max_entropy_ratio,
                "min_spread_ratio": self.min_spread_ratio,
                "patience": self.patience,
                "check_every_n_steps": self.check_every_n_steps,
                "min_step": self.min_step,
            },
            "checks": [asdict(c) for c in self.checks],
        }

    # --- hooks -------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Find the number of prototypes K.

        Raises:
            ConfigError: if it is neither given nor a hyperparameter (``head_out_dim``).
        """
        if stage != "fit" or not self.enabled or self.num_prototypes is not None:
            return
        k = pl_module.hparams.get("head_out_dim")
        if not isinstance(k, int) or k < 2:
            raise ConfigError(
                f"CollapseGuard cannot tell the number of prototypes of {type(pl_module).__name__}"
                " (no head_out_dim hyperparameter): give CollapseGuard(num_prototypes=K)."
            )
        self.num_prototypes = k

    def on_train_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Check every ``check_every_n_steps`` optimiser steps.

        Raises:
            CollapseError: at the collapse, with ``stop_on_collapse``.
        """
        step = trainer.global_step
        if not self.enabled or self.collapsed_at is not None or step % self.check_every_n_steps:
            return
        if self.checks and self.checks[-1].step >= step:  # accumulation: one check per step
            return
        metrics = trainer.callback_metrics
        if ENTROPY_KEY not in metrics or SPREAD_KEY not in metrics:
            return
        # the only read of the device's values: both figures in one transfer
        entropy, spread = torch.stack([metrics[ENTROPY_KEY], metrics[SPREAD_KEY]]).tolist()
        check = self._check(step, entropy, spread)
        # ranks see different batches: all of them act on the same decision
        collapsed = trainer.strategy.reduce_boolean_decision(check.collapsed, all=False)
        self.streak = self.streak + 1 if collapsed and step >= self.min_step else 0
        if self.streak < self.patience:
            return
        self.collapsed_at = step
        message = self._message(check, trainer)
        if trainer.is_global_zero:
            log.warning(message)
        if self.stop_on_collapse:
            raise CollapseError(message)

    def _check(self, step: int, entropy: float, spread: float) -> CollapseCheck:
        """Judge one check's figures and record it."""
        assert self.num_prototypes is not None
        entropy_ratio = entropy / math.log(self.num_prototypes)
        spread_ratio = spread / self.peak_spread if self.peak_spread > 0 else 1.0
        collapsed = (
            not math.isfinite(entropy)
            or not math.isfinite(spread)
            or entropy_ratio >= self.max_entropy_ratio
            or spread_ratio <= self.min_spread_ratio
        )
        self.peak_spread = max(self.peak_spread, spread if math.isfinite(spread) else 0.0)
        check = CollapseCheck(step, entropy, entropy_ratio, spread, spread_ratio, collapsed)
        self.checks.append(check)
        return check

    def _message(self, check: CollapseCheck, trainer: "pl.Trainer") -> str:
        """The warning: figures, step, where the checkpoints are and what to try."""
        assert self.num_prototypes is not None
        first = check.step - (self.patience - 1) * self.check_every_n_steps
        peak = max(self.checks, key=lambda c: c.feature_std)
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        saved = f" The checkpoints written so far are in {folder}." if folder else ""
        remedies = "; ".join(REMEDIES)
        return (
            f"Pretraining collapsed at step {check.step} ({self.patience} checks in a row since "
            f"step {first}): teacher target entropy {check.entropy:.3f} = "
            f"{check.entropy_ratio:.3f} of its maximum log({self.num_prototypes}) = "
            f"{math.log(self.num_prototypes):.3f} (threshold {self.max_entropy_ratio}); "
            f"teacher feature std {check.feature_std:.4f} = {check.spread_ratio:.2f} of its peak "
            f"{peak.feature_std:.4f} at step {peak.step} (threshold {self.min_spread_ratio}). "
            "The features no longer tell inputs apart and training on will not bring them "
            f"back.{saved} Usual remedies: {remedies}."
        )

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Log the verdict."""
        if not self.enabled or not trainer.is_global_zero:
            return
        if self.collapsed_at is None:
            log.info("Collapse guard: %s.", self.verdict)
        else:
            log.warning(
                "Collapse guard: %s (see the warning above and metrics.json).", self.verdict
            )
