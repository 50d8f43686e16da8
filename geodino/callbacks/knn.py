"""k-NN accuracy of the teacher on a labelled source, logged during pretraining."""

import json
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from geodino.callbacks.summary import _HistoryCallback


class KNNMonitor(_HistoryCallback):
    """Logs k-NN accuracy of the teacher's CLS features on a labelled source during pretraining.

    The source (class folders, JSON annotations or labelled points/polygons over rasters, as
    ``geodino knn`` reads them) is read and split once, when fitting starts; every
    ``every_n_steps`` optimiser steps its images are normalised with the datamodule's band
    statistics, embedded by the teacher backbone in eval mode, and classified by a
    temperature-weighted k-NN vote. The accuracy is logged as ``knn/accuracy`` to every
    logger and written with its history to ``knn_monitor.json`` in the run folder.

    With ``random_init`` the same architecture at random initialisation (the task rebuilt
    from its hyperparameters, without initial weights, seeded by ``random_init_seed``) is
    scored once when training starts, on the same split with the same band statistics, and
    logged as ``knn/accuracy_random_init``: the floor the curve has to rise above.

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
        random_init: score the same architecture at random initialisation once at the start.
        random_init_seed: seed of that initialisation.
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
        random_init: bool = True,
        random_init_seed: int = 0,
    ) -> None:
        """Keep the settings; the source is read when fitting starts."""
        super().__init__()
        self.source = source
        self.every_n_steps = max(1, every_n_steps)
        self.k, self.temperature = k, temperature
        self.rasters, self.band_names = rasters, band_names
        self.label_column, self.group_column = label_column, group_column
        self.split_column = split_column
        self.chip_size = chip_size
        self.test_fraction, self.seed = test_fraction, seed
        self.random_init, self.random_init_seed = random_init, random_init_seed
        self.random_init_accuracy: float | None = None
        self._data: Any = None
        self._split: Any = None

    def state_dict(self) -> dict[str, Any]:
        """The history and the random-init score, so a resumed run does not score it again."""
        return {**super().state_dict(), "random_init_accuracy": self.random_init_accuracy}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history and the random-init score.

        Args:
            state_dict: what :meth:`state_dict` returned.
        """
        super().load_state_dict(state_dict)
        self.random_init_accuracy = state_dict.get("random_init_accuracy")

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Read and split the labelled source once."""
        if stage != "fit" or self._data is not None:
            return
        from geodino.evaluation.protocols import split_features
        from geodino.evaluation.sources import read_labelled_source

        size = (pl_module.hparams.get("model_kwargs") or {}).get("img_size") or 224
        data = read_labelled_source(
            self.source,
            rasters=self.rasters,
            chip_size=self.chip_size or size,
            label_column=self.label_column,
            group_column=self.group_column,
            split_column=self.split_column,
            band_names=self.band_names,
        )
        index = torch.arange(len(data), dtype=torch.float32)[:, None]
        train, _, test, _ = split_features(data, index, self.test_fraction, self.seed)
        self._data = data
        self._split = (train[:, 0].long(), test[:, 0].long())

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Score the same architecture at random initialisation, once per run."""
        if not self.random_init or self.random_init_accuracy is not None:
            return
        backbone = random_init_backbone(pl_module, self.random_init_seed).to(pl_module.device)
        self.random_init_accuracy = self.evaluate(trainer, pl_module, backbone)

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
        if self.random_init_accuracy is not None:
            pl_module.log(
                "knn/accuracy_random_init",
                self.random_init_accuracy,
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )

    def evaluate(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        backbone: nn.Module | None = None,
    ) -> float:
        """k-NN accuracy of the current teacher backbone on the held-out samples.

        Args:
            trainer: the running trainer (its datamodule gives the band statistics).
            pl_module: the task; ``pl_module.model`` is the backbone.
            backbone: another backbone to score instead (e.g. a random initialisation).

        Returns:
            the accuracy.

        Raises:
            DataError: if the datamodule has no band statistics or the source other bands.
        """
        from geodino.errors import DataError
        from geodino.evaluation.features import extract_features
        from geodino.evaluation.knn import knn_accuracy
        from geodino.transforms.normalize import Normalize

        data, (train, test) = self._data, self._split
        # Lightning sets the trainer's datamodule at run time; its stub does not declare it
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        statistics = getattr(datamodule, "statistics", None)
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
            _backbone(pl_module) if backbone is None else backbone,
            data.images,
            transform,
            device=pl_module.device,
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
            "random_init_accuracy": self.random_init_accuracy,
            "random_init_seed": self.random_init_seed if self.random_init else None,
            "history": self.history,
        }
        (folder / "knn_monitor.json").write_text(json.dumps(report, indent=1))


def random_init_backbone(pl_module: "pl.LightningModule", seed: int) -> nn.Module:
    """The task's backbone at random initialisation: the task rebuilt from its hyperparameters.

    Args:
        pl_module: a task whose ``model`` is its backbone and whose hyperparameters rebuild it
            (the initial ``weights`` are not a hyperparameter, so none are loaded).
        seed: seed of the initialisation.

    Returns:
        the backbone, in eval mode.
    """
    # timm initialises from the global generator: draw under a fixed seed and restore it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = type(pl_module)(**pl_module.hparams)
    return _backbone(task).eval()


def _backbone(pl_module: "pl.LightningModule") -> nn.Module:
    """The backbone a task exposes as ``model``.

    Raises:
        ConfigError: if the task has no backbone module named ``model``.
    """
    from geodino.errors import ConfigError

    model = pl_module.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"KNNMonitor scores the backbone a task exposes as `model`; "
            f"{type(pl_module).__name__}.model is not a module."
        )
    return model
