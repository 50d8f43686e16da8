"""Lightning callbacks that leave a readable summary of a run in its folder."""

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class _HistoryCallback(Callback):
    """A callback that records rows of values, keeps them across resumes and writes them at
    the end of fitting into the run folder.
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

    def _output_folder(self, trainer: "pl.Trainer") -> Path | None:
        """The run folder on rank zero when there is something to write, else None."""
        # log_dir is a collective call under DDP: every rank asks, rank zero writes
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or not self.history:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class TrainingSummary(_HistoryCallback):
    """Records logged training metrics and writes ``metrics.json`` and ``training_curves.png``.

    Both files go to the run's log folder (``trainer.log_dir``, else ``default_root_dir``)
    when fitting ends, whatever logger is configured.

    Args:
        every_n_steps: record the metrics every so many optimiser steps.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        """Start with an empty history."""
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)

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
        row = {"step": float(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train") and getattr(value, "numel", lambda: 1)() == 1:
                row[key] = float(value)
        self.history.append(row)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the summary files (rank zero only)."""
        folder = self._output_folder(trainer)
        if folder is None:
            return
        from geodino.plotting import plot_training_curves

        final = {
            k: v for k, v in self.history[-1].items() if isinstance(v, float) and math.isfinite(v)
        }
        summary = {"steps": trainer.global_step, "final": final, "history": self.history}
        (folder / "metrics.json").write_text(json.dumps(summary, indent=1))
        plot_training_curves(self.history, folder / "training_curves.png")


class KNNMonitor(_HistoryCallback):
    """Logs k-NN accuracy of the teacher's CLS features on a labelled source during pretraining.

    The source (class folders, JSON annotations or labelled points/polygons over rasters, as
    ``geodino knn`` reads them) is read and split once, when fitting starts; every
    ``every_n_steps`` optimiser steps its images are normalised with the datamodule's band
    statistics, embedded by the teacher backbone in eval mode, and classified by a
    temperature-weighted k-NN vote. The accuracy is logged as ``knn/accuracy`` to every
    logger and written with its history to ``knn_monitor.json`` in the run folder.

    Args:
        source: the labelled source (folder, JSON or vector file).
        every_n_steps: evaluate every so many optimiser steps.
        k: neighbours in the vote.
        temperature: temperature of the vote weights.
        rasters: GeoTIFFs under vector labels.
        label_column: class column of vector labels.
        group_column: group column of vector labels (groups never straddle the split).
        split_column: column fixing the split of vector labels.
        chip_size: chip side for vector labels (default: the model's image size).
        band_names: band names of folder/JSON images.
        test_fraction: share of samples (or groups) classified; the rest are the neighbours.
        seed: seed of the split.
    """

    def __init__(
        self,
        source: str,
        every_n_steps: int = 100,
        k: int = 20,
        temperature: float = 0.07,
        rasters: list[str] | None = None,
        label_column: str = "label",
        group_column: str = "group_id",
        split_column: str | None = None,
        chip_size: int | None = None,
        band_names: list[str] | None = None,
        test_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        """Keep the settings; the source is read when fitting starts."""
        super().__init__()
        self.source = source
        self.every_n_steps = max(1, every_n_steps)
        self.k, self.temperature = k, temperature
        self.source_kwargs = {
            "rasters": rasters,
            "label_column": label_column,
            "group_column": group_column,
            "split_column": split_column,
            "band_names": band_names,
        }
        self.chip_size = chip_size
        self.test_fraction, self.seed = test_fraction, seed
        self._data: Any = None
        self._split: Any = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Read and split the labelled source once."""
        if stage != "fit" or self._data is not None:
            return
        import torch

        from geodino.evaluation.protocols import split_features
        from geodino.evaluation.sources import read_labelled_source

        kwargs = dict(self.source_kwargs)
        size = (getattr(pl_module, "hparams", {}).get("model_kwargs") or {}).get("img_size") or 224
        data = read_labelled_source(self.source, chip_size=self.chip_size or size, **kwargs)
        index = torch.arange(len(data), dtype=torch.float32)[:, None]
        train, _, test, _ = split_features(data, index, self.test_fraction, self.seed)
        self._data = data
        self._split = (train[:, 0].long(), test[:, 0].long())

    def on_train_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Evaluate every ``every_n_steps`` optimiser steps."""
        step = trainer.global_step
        if step % self.every_n_steps or (self.history and self.history[-1]["step"] == step):
            return
        accuracy = self.evaluate(trainer, pl_module)
        self.history.append({"step": float(step), "knn/accuracy": accuracy})
        pl_module.log("knn/accuracy", accuracy, on_step=True, on_epoch=False, batch_size=1)

    def evaluate(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> float:
        """k-NN accuracy of the current teacher backbone on the held-out samples.

        Args:
            trainer: the running trainer (its datamodule gives the band statistics).
            pl_module: the task; ``pl_module.model`` is the backbone.

        Returns:
            the accuracy.
        """
        from geodino.errors import DataError
        from geodino.evaluation.features import extract_features
        from geodino.evaluation.knn import knn_accuracy
        from geodino.transforms.normalize import Normalize

        data, (train, test) = self._data, self._split
        statistics = getattr(trainer.datamodule, "statistics", None)
        if statistics is None:
            raise DataError(
                "KNNMonitor needs the datamodule's band statistics to normalise its source; "
                "use a geodino datamodule."
            )
        names = statistics.band_names
        if data.images.shape[1] != len(names) or (data.band_names and data.band_names != names):
            raise DataError(
                f"KNNMonitor source {self.source} has bands {data.band_names or ''} "
                f"({data.images.shape[1]}) but the training data have {names}; give a "
                "labelled source with the training bands, in their order."
            )
        normalize = Normalize.from_statistics(statistics).to(pl_module.device)

        def transform(x: "Any") -> "Any":
            return normalize(normalize.fill_nodata(x))

        features = extract_features(
            pl_module.model, data.images, transform, device=pl_module.device
        )
        return knn_accuracy(
            features[train],
            data.labels[train],
            features[test],
            data.labels[test],
            k=self.k,
            temperature=self.temperature,
        )

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write ``knn_monitor.json`` (rank zero only)."""
        folder = self._output_folder(trainer)
        if folder is None:
            return
        report = {
            "source": str(self.source),
            "k": self.k,
            "temperature": self.temperature,
            "history": self.history,
        }
        (folder / "knn_monitor.json").write_text(json.dumps(report, indent=1))
