"""Lightning callbacks that leave a readable summary of a run in its folder."""

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class TrainingSummary(Callback):
    """Records logged training metrics and writes ``metrics.json`` and ``training_curves.png``.

    Both files go to the run's log folder (``trainer.log_dir``, else ``default_root_dir``)
    when fitting ends, whatever logger is configured.

    Args:
        every_n_steps: record the metrics every so many optimiser steps.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        """Start with an empty history."""
        self.every_n_steps = max(1, every_n_steps)
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
        batch: Any, batch_idx: int,
    ) -> None:
        """Record this step's training metrics."""
        if trainer.global_step % self.every_n_steps:
            return
        row = {"step": float(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train") and getattr(value, "numel", lambda: 1)() == 1:
                row[key] = float(value)
        self.history.append(row)

    def state_dict(self) -> dict[str, Any]:
        """The recorded history, so a resumed run's summary covers the whole run."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recorded history.

        Args:
            state_dict: what :meth:`state_dict` returned.
        """
        self.history = list(state_dict.get("history", []))

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the summary files (rank zero only)."""
        # log_dir is a collective call under DDP: every rank asks, rank zero writes
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not self.history:
            return
        from geodino.plotting import plot_training_curves

        folder.mkdir(parents=True, exist_ok=True)
        final = {
            k: v for k, v in self.history[-1].items() if isinstance(v, float) and math.isfinite(v)
        }
        summary = {"steps": trainer.global_step, "final": final, "history": self.history}
        (folder / "metrics.json").write_text(json.dumps(summary, indent=1))
        plot_training_curves(self.history, folder / "training_curves.png")
