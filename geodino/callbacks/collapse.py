"""A guard that notices when DINOv2 pretraining collapses, says so, and can stop the run.

DINO-style self-distillation has two trivial solutions (Caron et al. 2021, section 5.3):
*uniform* collapse, where the teacher gives every input the same flat distribution over
the prototypes (the target entropy reaches its maximum log K), and *representation*
collapse, where the backbone maps every input to nearly the same feature (the spread of the
teacher's CLS features across a batch falls towards zero). Either way the loss still looks
ordinary, and the features are worth no more than random initialisation. A third failure,
*dominance* (one prototype wins every input: the per-input entropy falls to zero with the
batch's), is what centring exists to prevent; it shows as fewer than two prototypes used by
a whole batch. The guard reads the figures the task logs, ``train/teacher_entropy``,
``train/teacher_feature_std`` and ``train/teacher_prototypes_used``.

Near-uniform targets are also a normal *transient* around the end of the learning-rate
warm-up: the demo recipe on a texture-only catalog with a 3,000-step schedule sat at 0.98-0.999
of log K from step 175 to 575 (warm-up: 300 steps) and then learnt (0.92 of log K and k-NN
1.0 at step 1,000). So the guard judges only after twice the warm-up, and a run that comes
back for ``patience`` checks is recorded as recovered rather than left marked as collapsed.
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from geodino.errors import CollapseError, ConfigError

log = logging.getLogger(__name__)

#: The logged figures the guard reads.
ENTROPY_KEY = "train/teacher_entropy"
SPREAD_KEY = "train/teacher_feature_std"
PROTOTYPES_KEY = "train/teacher_prototypes_used"

#: Steps never judged, whatever the warm-up (early training is often near-uniform).
MIN_STEP_FLOOR = 200

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


@runtime_checkable
class WarmupScheduled(Protocol):
    """A module whose learning rate warms up over a known number of optimiser steps."""

    @property
    def warmup_steps(self) -> int:
        """Optimiser steps of the learning-rate warm-up of the run being fitted."""
        ...


@dataclass
class CollapseEpisode:
    """A collapse the guard declared, and when the run came back from it.

    Args:
        collapsed_at: step at which the collapse was declared.
        recovered_at: step at which ``patience`` healthy checks in a row ended it (None: never).
    """

    collapsed_at: int
    recovered_at: int | None = None


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
        prototypes_used: exp of the entropy of the batch's mean target (the number of
            prototypes the batch effectively uses); None when the task does not log it.
    """

    step: int
    entropy: float
    entropy_ratio: float
    feature_std: float
    spread_ratio: float
    collapsed: bool
    prototypes_used: float | None = None


class CollapseGuard(Callback):
    """Watches the teacher's target entropy and feature spread for collapse.

    Every ``check_every_n_steps`` optimiser steps (the only steps where it reads the logged
    values back from the device) a check counts as collapsed when the teacher's targets are
    nearly uniform (entropy >= ``max_entropy_ratio`` x log K, K the number of prototypes),
    its feature spread has fallen to ``min_spread_ratio`` of the largest spread seen at an
    earlier check, or one prototype wins (the batch uses fewer than ``min_prototypes_used``
    prototypes). After ``patience`` collapsed checks in a row, none before ``min_step``, the
    guard logs a WARNING with the figures, the step and the usual remedies, records
    "collapsed at step N" in ``metrics.json`` (section ``collapse``) and, with
    ``stop_on_collapse``, stops the run with :class:`~geodino.errors.CollapseError`; the
    checkpoints written so far are left as they are. Without it the guard keeps checking,
    and ``patience`` healthy checks in a row end the collapse (INFO, "recovered"). A run
    whose last collapse ended, or that had none, is "healthy". ``DINOv2Task`` adds a guard
    with these defaults to every run; give one in ``trainer.callbacks`` to change them, or
    ``enabled: false`` to switch it off.

    Args:
        enabled: False turns the guard off.
        stop_on_collapse: raise :class:`~geodino.errors.CollapseError` at the collapse.
        check_every_n_steps: optimiser steps between checks.
        patience: collapsed checks in a row that make a collapse, and healthy checks in a
            row that end one.
        min_step: first step that may be judged; None: twice the learning-rate warm-up of a
            :class:`WarmupScheduled` module (near-uniform targets are a normal transient
            around its end), and never before step 200.
        max_entropy_ratio: target entropy over log K at or above which targets are uniform.
        min_spread_ratio: feature spread over its peak at or below which features collapsed.
        min_prototypes_used: prototypes a batch uses (exp of its mean target's entropy)
            below which one prototype wins.
        num_prototypes: K; None reads ``head_out_dim`` from the task's hyperparameters.
    """

    summary_key = "collapse"

    def __init__(
        self,
        enabled: bool = True,
        stop_on_collapse: bool = False,
        check_every_n_steps: int = 25,
        patience: int = 4,
        min_step: int | None = None,
        max_entropy_ratio: float = 0.98,
        min_spread_ratio: float = 0.2,
        min_prototypes_used: float = 1.5,
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
        if min_prototypes_used < 1.0 or (min_step is not None and min_step < 0):
            raise ConfigError(
                f"CollapseGuard: min_prototypes_used={min_prototypes_used} must be >= 1 (1 "
                f"turns the check off) and min_step={min_step} >= 0 or null."
            )
        self.enabled = enabled
        self.stop_on_collapse = stop_on_collapse
        self.check_every_n_steps = check_every_n_steps
        self.patience = patience
        self.min_step = min_step
        self.max_entropy_ratio = max_entropy_ratio
        self.min_spread_ratio = min_spread_ratio
        self.min_prototypes_used = min_prototypes_used
        self.num_prototypes = num_prototypes
        self.judged_from = MIN_STEP_FLOOR if min_step is None else min_step
        self.checks: list[CollapseCheck] = []
        self.peak_spread = 0.0
        self.streak = 0
        self.episodes: list[CollapseEpisode] = []

    @property
    def collapsed_at(self) -> int | None:
        """Step at which the current collapse was declared; None while healthy."""
        if self.episodes and self.episodes[-1].recovered_at is None:
            return self.episodes[-1].collapsed_at
        return None

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checks so far, the peak spread, the streak and the collapses (kept on resume)."""
        return {
            "checks": [asdict(c) for c in self.checks],
            "peak_spread": self.peak_spread,
            "streak": self.streak,
            "episodes": [asdict(e) for e in self.episodes],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: the saved state.
        """
        self.checks = [CollapseCheck(**c) for c in state_dict.get("checks", [])]
        self.peak_spread = float(state_dict.get("peak_spread", 0.0))
        self.streak = int(state_dict.get("streak", 0))
        self.episodes = [CollapseEpisode(**e) for e in state_dict.get("episodes", [])]
        if "episodes" not in state_dict and state_dict.get("collapsed_at") is not None:
            # written before the guard tracked recoveries
            self.episodes = [CollapseEpisode(int(state_dict["collapsed_at"]))]

    # --- verdict -----------------------------------------------------------------------
    @property
    def verdict(self) -> str:
        """``healthy`` (naming collapses it recovered from), ``collapsed at step N``, or not."""
        if not self.enabled:
            return "not checked"
        if self.collapsed_at is not None:
            return f"collapsed at step {self.collapsed_at}"
        if not any(c.step >= self.judged_from for c in self.checks):
            return f"not judged (no check at or after step {self.judged_from})"
        if self.episodes:
            spans = ", ".join(
                f"collapsed at step {e.collapsed_at}, recovered by step {e.recovered_at}"
                for e in self.episodes
            )
            return f"healthy ({spans})"
        return "healthy"

    def summary(self) -> dict[str, Any]:
        """The verdict, the last check and the thresholds, for ``metrics.json``."""
        return {
            "verdict": self.verdict,
            "collapsed_at": self.collapsed_at,
            "episodes": [asdict(e) for e in self.episodes],
            "last_check": asdict(self.checks[-1]) if self.checks else None,
            "thresholds": {
                "max_entropy_ratio": self.max_entropy_ratio,
                "min_spread_ratio": self.min_spread_ratio,
                "min_prototypes_used": self.min_prototypes_used,
                "patience": self.patience,
                "check_every_n_steps": self.check_every_n_steps,
                "min_step": self.judged_from,
            },
            "checks": [asdict(c) for c in self.checks],
        }

    # --- hooks -------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Find the number of prototypes K and the first step to judge.

        Raises:
            ConfigError: if K is neither given nor a hyperparameter (``head_out_dim``).
        """
        if stage != "fit" or not self.enabled:
            return
        if self.min_step is None:
            warmup = pl_module.warmup_steps if isinstance(pl_module, WarmupScheduled) else 0
            self.judged_from = max(MIN_STEP_FLOOR, 2 * warmup)
        if self.num_prototypes is not None:
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
        if not self.enabled or step % self.check_every_n_steps:
            return
        if self.checks and self.checks[-1].step >= step:  # accumulation: one check per step
            return
        metrics = trainer.callback_metrics
        if ENTROPY_KEY not in metrics or SPREAD_KEY not in metrics:
            return
        keys = [ENTROPY_KEY, SPREAD_KEY] + ([PROTOTYPES_KEY] if PROTOTYPES_KEY in metrics else [])
        # the only read of the device's values: every figure in one transfer
        figures = torch.stack([metrics[k].float().reshape(()) for k in keys]).tolist()
        check = self._check(step, *figures)
        # ranks see different batches: all of them act on the same decision
        collapsed = trainer.strategy.reduce_boolean_decision(check.collapsed, all=False)
        change = self._advance(step, collapsed)
        if change == "collapsed":
            message = self._message(check, trainer)
            if trainer.is_global_zero:
                log.warning(message)
            if self.stop_on_collapse:
                raise CollapseError(message)
        elif change == "recovered" and trainer.is_global_zero:
            log.info(
                "Pretraining recovered at step %d from the collapse declared at step %d (%d "
                "healthy checks in a row: entropy %.3f of log K, feature std %.4f).",
                step,
                self.episodes[-1].collapsed_at,
                self.patience,
                check.entropy_ratio,
                check.feature_std,
            )

    def _advance(self, step: int, collapsed: bool) -> Literal["collapsed", "recovered"] | None:
        """Count a check's verdict; a collapse starts or ends after ``patience`` in a row.

        Args:
            step: the check's step.
            collapsed: whether the check (on any rank) crossed a threshold.

        Returns:
            ``collapsed`` when a collapse is declared, ``recovered`` when one ends, else None.
        """
        if self.collapsed_at is None:
            self.streak = self.streak + 1 if collapsed and step >= self.judged_from else 0
            if self.streak < self.patience:
                return None
            self.episodes.append(CollapseEpisode(step))
            self.streak = 0
            return "collapsed"
        self.streak = self.streak + 1 if not collapsed else 0  # healthy checks in a row
        if self.streak < self.patience:
            return None
        self.episodes[-1].recovered_at = step
        self.streak = 0
        return "recovered"

    def _check(
        self, step: int, entropy: float, spread: float, prototypes_used: float | None = None
    ) -> CollapseCheck:
        """Judge one check's figures and record it."""
        assert self.num_prototypes is not None
        entropy_ratio = entropy / math.log(self.num_prototypes)
        spread_ratio = spread / self.peak_spread if self.peak_spread > 0 else 1.0
        collapsed = (
            not math.isfinite(entropy)
            or not math.isfinite(spread)
            or entropy_ratio >= self.max_entropy_ratio
            or spread_ratio <= self.min_spread_ratio
            or (prototypes_used is not None and prototypes_used < self.min_prototypes_used)
        )
        self.peak_spread = max(self.peak_spread, spread if math.isfinite(spread) else 0.0)
        check = CollapseCheck(
            step, entropy, entropy_ratio, spread, spread_ratio, collapsed, prototypes_used
        )
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
            f"{peak.feature_std:.4f} at step {peak.step} (threshold {self.min_spread_ratio})"
            f"{self._usage(check)}. "
            "The features no longer tell inputs apart and training on will not bring them "
            f"back.{saved} Usual remedies: {remedies}."
        )

    def _usage(self, check: CollapseCheck) -> str:
        """The prototypes-used figure for the warning, when the task logs it."""
        if check.prototypes_used is None:
            return ""
        return (
            f"; the batch uses {check.prototypes_used:.2f} prototypes (threshold "
            f"{self.min_prototypes_used}: below it one prototype wins)"
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
