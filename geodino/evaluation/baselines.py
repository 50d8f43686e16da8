"""The floors a backbone's score is read against, as torchgeo-bench publishes them.

Per-band statistics of each chip, random convolutional features (MOSAIKS, TorchGeo's
:class:`~torchgeo.models.RCF`) and the same architecture at random initialisation.
"""

import copy
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from geodino.errors import WeightsError
from geodino.export import PretrainedBackbone, load_backbone, write_export
from geodino.seeding import derive_seed

log = logging.getLogger(__name__)

#: The baselines every evaluation reports, in the order they are printed.
BASELINES = ("random_init", "rcf", "band_stats")
#: Random convolutional features per chip (MOSAIKS uses a few hundred to a few thousand).
RCF_FEATURES = 512
#: Side of the random convolution filters.
RCF_KERNEL = 3


def band_statistics_features(images: Tensor) -> Tensor:
    """Mean and standard deviation of each band of each chip.

    Args:
        images: (N, C, H, W) chips, normalised as the backbone reads them.

    Returns:
        (N, 2C) features: the C means, then the C standard deviations.
    """
    flat = images.float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, correction=0)], dim=1)


@torch.no_grad()
def random_conv_features(
    images: Tensor, seed: int = 0, features: int = RCF_FEATURES, batch_size: int = 256
) -> Tensor:
    """Random convolutional features (TorchGeo's RCF, Gaussian filters) of each chip.

    Args:
        images: (N, C, H, W) chips, normalised as the backbone reads them.
        seed: seed of the filters.
        features: number of features (even).
        batch_size: chips per forward pass.

    Returns:
        (N, features) features.
    """
    from torchgeo.models import RCF

    # RCF reads a seed of 0 as "unseeded": derive a non-zero one
    model = RCF(
        images.shape[1],
        features=features,
        kernel_size=RCF_KERNEL,
        seed=derive_seed(seed, 1) or 1,
        mode="gaussian",
    )
    out = [model(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def random_init_twin(backbone: PretrainedBackbone, seed: int = 0) -> PretrainedBackbone:
    """The same architecture, bands and band statistics, at timm's random initialisation.

    Args:
        backbone: the pretrained backbone.
        seed: seed of the initialisation.

    Returns:
        a new backbone in eval mode; ``meta`` says ``random_init: true``.

    Raises:
        WeightsError: if the model has no timm initialisation to draw from.
    """
    model = copy.deepcopy(backbone.model)
    if not hasattr(model, "init_weights"):
        raise WeightsError(
            f"{backbone.source}: {type(model).__name__} has no timm init_weights; a random "
            "initialisation of it cannot be drawn."
        )
    # timm's initialisers draw from the global generator only: fork it, so that the draws
    # depend on the seed alone and the caller's generator state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 2))
        model.init_weights()
    meta = {**backbone.meta, "random_init": True, "random_init_seed": seed}
    return replace(
        backbone, model=model.eval(), source=f"{backbone.source} (random init)", meta=meta
    )


def random_init_export(weights: str | Path, out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the random-init twin of a backbone as an export folder.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        out_dir: folder to write (``backbone.ckpt``, ``.safetensors``, ``.json``).
        seed: seed of the initialisation.

    Returns:
        the written paths by kind.
    """
    from geodino.export import export_backbone

    source = Path(weights)
    if not (source.is_dir() or source.suffix == ".safetensors"):
        export_backbone(source, out_dir)  # the checkpoint's own sidecar, then the twin over it
        source = Path(out_dir)
    sidecar = (source if source.is_dir() else source.parent) / "backbone.json"
    meta = json.loads(sidecar.read_text())
    twin = random_init_twin(load_backbone(source), seed)
    kwargs = dict(meta.get("model_kwargs") or {})
    if meta.get("train_img_size"):
        kwargs["img_size"] = int(meta["train_img_size"])
    statistics = asdict(twin.statistics) if twin.statistics is not None else None
    return write_export(
        twin.model.state_dict(),
        out_dir,
        meta["model"],
        int(meta["in_chans"]),
        model_kwargs=kwargs,
        bands=list(meta.get("bands") or []),
        statistics=statistics,
        extra={"random_init": True, "random_init_seed": seed, "twin_of": str(weights)},
    )


def baseline_features(
    images: Tensor,
    backbone: PretrainedBackbone,
    seed: int = 0,
    batch_size: int = 64,
    doy: Tensor | None = None,
) -> dict[str, Tensor]:
    """Features of every baseline for the chips a backbone is evaluated on.

    All read the chips as the backbone does (nodata filled, normalised with its band
    statistics).

    Args:
        images: (N, C, H, W) raw chips, or (N, T, C, H, W) time series (the random
            filters and band statistics then read the dates as bands).
        backbone: the evaluated backbone.
        seed: seed of the random filters and the random initialisation.
        batch_size: chips per forward pass.
        doy: (N, T) days of year of time series.

    Returns:
        (N, D) features by baseline name (see :data:`BASELINES`).
    """
    from geodino.evaluation.features import extract_features

    normalised = torch.cat(
        [backbone.normalize(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
    if normalised.ndim == 5:
        normalised = normalised.flatten(1, 2)
    twin = random_init_twin(backbone, seed)
    return {
        "random_init": extract_features(twin.model, images, twin.normalize, batch_size, doy=doy),
        "rcf": random_conv_features(normalised, seed),
        "band_stats": band_statistics_features(normalised),
    }
