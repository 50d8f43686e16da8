"""Image classification with a pretrained geodino ViT at the chip size trained on."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor
from torchgeo.tasks import Classification as TorchGeoClassification

from geodino.tasks.pretrained import build_classifier, export_folder, resolve_architecture


class Classification(TorchGeoClassification):
    """TorchGeo's ``Classification`` built from a ``geodino export`` at any chip size.

    TorchGeo builds timm models at their default size (518 px for the dinov2 family) and
    timm's default architecture of the name; this task builds the exported backbone (with
    any architecture overrides it was trained with) for any chip size that the patch size
    divides, with timm's classifier head on the class token (and registers/patch pooling as
    the architecture defines), and keeps TorchGeo's losses, metrics, optimiser and
    ``freeze_backbone`` linear probing.

    Args:
        weights: a ``geodino export`` folder; None builds ``model`` randomly initialised.
        model: timm ViT name, needed without ``weights`` (the export names its own).
        model_kwargs: more ``timm.create_model`` arguments (without ``weights``, the
            architecture; with it, only ones that keep the weights' shapes, e.g.
            ``drop_path_rate`` or ``global_pool``).
        img_size: chip size to build the position grid for (resampled once); None keeps the
            export's grid, resampled on the fly for each chip size.
        in_channels: number of input bands (default: the export's; must equal it).
        task: ``binary``, ``multiclass`` or ``multilabel``.
        num_classes: number of classes (``multiclass``).
        num_labels: number of labels (``multilabel``).
        labels: class names.
        pos_weight: weight of positive examples with ``bce`` loss.
        loss: ``ce``, ``bce``, ``jaccard``, ``focal`` or ``dice``.
        class_weights: rescaling weight per class with ``ce`` loss.
        ignore_index: class index ignored by the loss and the metrics.
        lr: learning rate.
        patience: patience of the plateau learning-rate scheduler.
        freeze_backbone: train the classifier head only (linear probe).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        model: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        img_size: int | None = None,
        in_channels: int | None = None,
        task: Literal["binary", "multiclass", "multilabel"] = "multiclass",
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        pos_weight: Tensor | None = None,
        loss: Literal["ce", "bce", "jaccard", "focal", "dice"] = "ce",
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
    ) -> None:
        """Read the export's architecture (saved as hyper-parameters) and build the model."""
        # the export's architecture replaces the arguments' before Lightning records them, so
        # a checkpoint of this task rebuilds without the export folder
        model, model_kwargs, in_channels = resolve_architecture(
            weights, model, model_kwargs, in_channels
        )
        super().__init__(
            model=model,
            weights=str(weights) if weights is not None else None,
            in_channels=in_channels,
            task=task,
            num_classes=num_classes,
            num_labels=num_labels,
            labels=labels,
            pos_weight=pos_weight,
            loss=loss,
            class_weights=class_weights,
            ignore_index=ignore_index,
            lr=lr,
            patience=patience,
            freeze_backbone=freeze_backbone,
        )

    def configure_models(self) -> None:
        """The ViT (from the export) with a classifier head; linear-probe freezing."""
        hp = self.hparams
        self.model = build_classifier(
            export_folder(self.weights),
            hp["model"],
            hp["in_channels"],
            hp["num_classes"] or hp["num_labels"] or 1,
            hp["model_kwargs"],
            img_size=hp["img_size"],
        )
        if hp["freeze_backbone"]:
            self.model.requires_grad_(False)
            self.model.get_classifier().requires_grad_(True)
