"""Frozen features of a backbone and labelled chips to evaluate them on."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from geodino.errors import DataError


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    transform: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    doy: Tensor | None = None,
) -> Tensor:
    """CLS features of images through a backbone in eval mode.

    Args:
        backbone: an encoder (:class:`~geodino.models.encoder.Encoder`, e.g. a timm ViT or a
            FusionViT); its class tokens are the features.
        images: (N, C, H, W) raw or normalised images, or (N, T, C, H, W) time series
            (with ``doy``) for a FusionViT.
        transform: applied to each batch on the device before the backbone (e.g. nodata
            filling and normalisation).
        batch_size: images per forward pass.
        device: where to run.
        doy: (N, T) days of year of time series (0 for padding).

    Returns:
        (N, D) float32 CLS features on the CPU.
    """
    from geodino.models import as_encoder
    from geodino.models.fusion import series_inputs

    encoder = as_encoder(backbone)
    was_training = backbone.training
    backbone.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device).float()
        if transform is not None:
            batch = transform(batch)
        inputs: Tensor | dict[str, Tensor] = batch
        if doy is not None:
            days = doy[start : start + batch_size].to(device)
            inputs = series_inputs(batch, days, encoder.modalities)
        out.append(encoder.split_tokens(encoder.forward_tokens(inputs))[0].float().cpu())
    backbone.train(was_training)
    return torch.cat(out)


def majority_labels(
    masks: Tensor, ignore_index: int, min_purity: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Majority class of each label chip.

    Args:
        masks: (N, H, W) integer label chips.
        ignore_index: label value that marks unlabelled pixels.
        min_purity: least fraction of labelled pixels the majority class must cover.

    Returns:
        labels (N,) and a bool (N,) telling which chips are pure enough to use.
    """
    flat = masks.flatten(1).long()
    valid = flat != ignore_index
    num_classes = int(flat[valid].max()) + 1 if valid.any() else 1
    counts = torch.zeros(len(flat), num_classes, dtype=torch.long)
    counts.scatter_add_(1, torch.where(valid, flat, 0), valid.long())
    top, labels = counts.max(1)
    purity = top.float() / valid.sum(1).clamp_min(1)
    return labels, (purity >= min_purity) & valid.any(1)


def read_labelled_chips(
    dataset: Any, labels: Any, sampler: Any, ignore_index: int, min_purity: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Read image chips and the majority class of the label raster under each.

    Args:
        dataset: TorchGeo image dataset (returns ``image``).
        labels: TorchGeo label dataset on the same footprint (returns ``mask``).
        sampler: yields queries valid for both (e.g. a grid :class:`~geodino.samplers.AOISampler`).
        ignore_index: label nodata value.
        min_purity: least fraction of the chip the majority class must cover.

    Returns:
        images (N, C, H, W) and labels (N,) of the chips pure enough to use.

    Raises:
        DataError: if no chip qualifies.
    """
    images, masks = [], []
    for query in sampler:
        images.append(dataset[query]["image"])
        masks.append(labels[query]["mask"])
    if not images:
        raise DataError("the sampler yielded no chips to label; check the AOI and chip size.")
    chip_labels, keep = majority_labels(torch.stack(masks), ignore_index, min_purity)
    if not keep.any():
        raise DataError(
            f"no chip has a majority class covering {min_purity:.0%} of it; lower min_purity "
            "or use smaller chips."
        )
    return torch.stack(images)[keep], chip_labels[keep]
