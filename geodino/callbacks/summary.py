"""Lightning callbacks that leave a readable summary of a run in its folder."""

import json
import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


@runtime_checkable
class RunVerdict(Protocol):
    """A callback whose judgement of the run goes into ``metrics.json`` under ``summary_key``."""

    summary_key: str

    def summary(self) -> dict[str, Any]:
        """What the callback concluded about the run (JSON-serialisable)."""
        ...


class _HistoryCallback(Callback):
    """A callback that records rows of values and writes them into the run folder.

    The rows are kept across resumes; they are written when fitting ends.
    """

    def __init__(self) -> None:
        """Start with an empty history."""
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        """The recorded history, so a resumed run's files cover the whole run."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recorded history.

        Args:
            state_dict: what :meth:`state_dict` returned.
        """
        self.history = list(state_dict.get("history", []))

    def _output_folder(self, trainer: "pl.Trainer", collective: bool = True) -> Path | None:
        """The run folder on rank zero when there is something to write, else None.

        Args:
            trainer: the trainer.
            collective: every rank calls (``trainer.log_dir`` broadcasts under DDP); False
                asks the logger alone, for an exception that one rank may meet alone.
        """
        if collective:
            # log_dir is a collective call under DDP: every rank asks, rank zero writes
            folder = Path(trainer.log_dir or trainer.default_root_dir)
        else:
            logger_dir = trainer.logger.log_dir if trainer.logger is not None else None
            folder = Path(logger_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not self.history:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class TrainingSummary(_HistoryCallback):
    """Records logged training metrics and writes ``metrics.json`` and ``training_curves.png``.

    Both files go to the run's log folder (``trainer.log_dir``, else ``default_root_dir``)
    when fitting ends, or stops on an exception, whatever logger is configured. Every
    callback of the trainer that is a :class:`RunVerdict` (e.g. the collapse guard) adds its
    judgement of the run under its ``summary_key``.

    The values stay on the device as logged and are read back every ``read_every_n_rows``
    rows in one transfer (and before the history is saved or written): on an accelerator a
    read waits for the queued work, so reading every step would stall it.

    Args:
        every_n_steps: record the metrics every so many optimiser steps.
        read_every_n_rows: recorded rows between reads of their values from the device.
    """

    def __init__(self, every_n_steps: int = 1, read_every_n_rows: int = 25) -> None:
        """Start with an empty history."""
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)
        self.read_every_n_rows = max(1, read_every_n_rows)
        self._unread: list[dict[str, float | Tensor]] = []

    def state_dict(self) -> dict[str, Any]:
        """The recorded history (read back first)."""
        self._read()
        return super().state_dict()

    def _read(self) -> None:
        """Move the unread rows into the history, one transfer per device."""
        cells = [
            (row, k, v) for row in self._unread for k, v in row.items() if isinstance(v, Tensor)
        ]
        for device in {v.device for _, _, v in cells}:
            here = [(row, k, v) for row, k, v in cells if v.device == device]
            values = torch.stack([v.reshape(()).float() for _, _, v in here]).tolist()
            for (row, key, _), value in zip(here, values, strict=True):
                row[key] = value
        self.history += [{k: float(v) for k, v in row.items()} for row in self._unread]
        self._unread = []

    def on_train_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record this step's training metrics."""
        if trainer.global_step % self.every_n_steps:
            return
        row: dict[str, float | Tensor] = {"step": float(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train") and getattr(value, "numel", lambda: 1)() == 1:
                row[key] = value.detach() if isinstance(value, Tensor) else float(value)
        self._unread.append(row)
        if len(self._unread) >= self.read_every_n_rows:
            self._read()

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the summary files (rank zero only)."""
        self.write(trainer)

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        """Write the summary files of the steps run so far (rank zero only)."""
        self.write(trainer, collective=False)

    def write(self, trainer: "pl.Trainer", collective: bool = True) -> None:
        """Write ``metrics.json`` and ``training_curves.png`` into the run folder.

        Args:
            trainer: the trainer (its callbacks' verdicts are included).
            collective: whether every rank calls (see :meth:`_output_folder`).
        """
        self._read()
        folder = self._output_folder(trainer, collective)
        if folder is None:
            return
        from geodino.plotting import plot_training_curves

        final = {
            k: v for k, v in self.history[-1].items() if isinstance(v, float) and math.isfinite(v)
        }
        summary: dict[str, Any] = {"steps": trainer.global_step, "final": final}
        # Lightning sets the trainer's callbacks at run time; its stub does not declare them
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, RunVerdict):
                summary[callback.summary_key] = callback.summary()
        summary["history"] = self.history
        (folder / "metrics.json").write_text(json.dumps(summary, indent=1))
        plot_training_curves(self.history, folder / "training_curves.png")
