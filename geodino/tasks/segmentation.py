"""Semantic segmentation with a pretrained geodino ViT, as a TorchGeo task."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torchgeo.tasks import SemanticSegmentation

from geodino.models.segmentation import ViTSegmentationModel
from geodino.tasks.pretrained import build_encoder, export_folder, resolve_architecture


class Segmentation(SemanticSegmentation):
    """TorchGeo's ``SemanticSegmentation`` with a ViT encoder from a ``geodino export``.

    TorchGeo takes ViTs only through DPT at patch 16 and 224 px and never loads ViT weights;
    this task builds the exported backbone (patch 14 or 16, registers, any band count) for
    any chip size that the patch size divides, puts a UPerNet-style decoder over four of its
    blocks (or DINOv2's linear probe over one or more) on it, and keeps TorchGeo's losses,
    metrics, optimiser, freezing options and plots.

    Args:
        weights: a ``geodino export`` folder; None builds ``backbone`` randomly initialised.
        model: decoder, ``upernet`` (multi-level) or ``linear`` (linear probe).
        backbone: timm ViT name, needed without ``weights`` (the export names its own).
        backbone_kwargs: more ``timm.create_model`` arguments (without ``weights``, the
            architecture, e.g. depth; with it, only ones that keep the weights' shapes, e.g.
            ``drop_path_rate``).
        layers: blocks the decoder reads (default: four spread over the depth for upernet,
            the last for linear).
        decoder_channels: width of the UPerNet decoder.
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
        ignore_index: class index ignored by the loss and the metrics (e.g. nodata).
        lr: learning rate.
        patience: patience of the plateau learning-rate scheduler.
        freeze_backbone: keep the encoder fixed (train decoder and classifier).
        freeze_decoder: keep the decoder fixed too (train the classifier only).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        model: Literal["upernet", "linear"] = "upernet",
        backbone: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        layers: Sequence[int] | None = None,
        decoder_channels: int = 256,
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
        freeze_decoder: bool = False,
    ) -> None:
        """Read the export's architecture (saved as hyper-parameters) and build the model."""
        # the export's architecture replaces the arguments' before Lightning records them, so
        # a checkpoint of this task rebuilds without the export folder
        backbone, backbone_kwargs, in_channels = resolve_architecture(
            weights, backbone, backbone_kwargs, in_channels, model_arg="backbone"
        )
        layers = None if layers is None else [int(i) for i in layers]
        super().__init__(
            model=model,  # type: ignore[arg-type]
            backbone=backbone,
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
            freeze_decoder=freeze_decoder,
        )

    def configure_models(self) -> None:
        """The ViT encoder (from the export), the decoder and the classifier; freezing."""
        hp = self.hparams
        encoder = build_encoder(
            export_folder(self.weights),
            hp["backbone"],
            hp["in_channels"],
            hp["backbone_kwargs"],
            img_size=hp["img_size"],
        )
        self.model = ViTSegmentationModel(
            encoder,
            hp["model"],
            num_classes=hp["num_classes"] or hp["num_labels"] or 1,
            layers=hp["layers"],
            decoder_channels=hp["decoder_channels"],
        )
        if hp["freeze_backbone"]:
            self.model.encoder.requires_grad_(False)
        if hp["freeze_decoder"]:
            self.model.decoder.requires_grad_(False)

    def features(self, images: Tensor) -> list[Tensor]:
        """Encoder feature maps the decoder reads (see ``ViTSegmentationModel.features``).

        Args:
            images: (B, C, H, W) normalised chips.

        Returns:
            one (B, D, H / patch, W / patch) map per decoder layer.
        """
        with torch.no_grad():
            maps: list[Tensor] = self.model.features(images)
        return maps
