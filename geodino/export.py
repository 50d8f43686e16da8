"""Export a pretrained backbone for TorchGeo, timm and geodino."""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from geodino import __version__
from geodino.checkpoints import load_checkpoint
from geodino.errors import DataError, WeightsError

if TYPE_CHECKING:
    from timm.models import VisionTransformer

    from geodino.transforms.normalize import BandStatistics

log = logging.getLogger(__name__)

#: timm keyword arguments that change only the input size handling, not the weights' shapes
#: beyond the position embedding (which export resamples), or only regularise training:
#: neither is part of the exported architecture.
_SIZE_KWARGS = {
    "img_size",
    "dynamic_img_size",
    "dynamic_img_pad",
    "drop_rate",
    "drop_path_rate",
    "attn_drop_rate",
    "proj_drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
}


def backbone_state_dict(checkpoint: dict[str, Any], which: str = "teacher") -> dict[str, Tensor]:
    """The backbone weights of a DINOv2Task checkpoint.

    Args:
        checkpoint: the loaded Lightning checkpoint.
        which: ``teacher`` (the EMA model DINOv2 evaluates) or ``student``.

    Returns:
        timm-keyed state dict.

    Raises:
        WeightsError: if the checkpoint holds no such backbone.
    """
    prefix = f"{which}.backbone."
    state = {
        k[len(prefix) :]: v
        for k, v in checkpoint.get("state_dict", {}).items()
        if k.startswith(prefix)
    }
    if not state:
        raise WeightsError(
            f"the checkpoint has no '{prefix}*' weights: it is not a geodino DINOv2Task "
            "checkpoint (export takes the .ckpt files that `geodino fit` writes)."
        )
    return state


def resample_to_default(state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    """Resample the position embedding to ``model``'s grid and check every shape.

    Args:
        state: timm-keyed backbone weights.
        model: the timm model the weights must fit (built at its default size).

    Returns:
        the weights, shaped as ``model``'s own.

    Raises:
        WeightsError: if any other tensor disagrees in shape.
    """
    from timm.layers import resample_abs_pos_embed

    target = model.state_dict()
    out = dict(state)
    if "pos_embed" in out and out["pos_embed"].shape != target["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        grid = _geometry(model)[0]
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = sorted(set(target) - set(out) - {"head.weight", "head.bias"})
    if bad or missing:
        raise WeightsError(
            "the backbone does not fit the architecture it names: "
            + "; ".join(bad + [f"missing {m}" for m in missing[:5]])
        )
    return {k: v for k, v in out.items() if k in target}


def export_backbone(
    checkpoint: str | Path,
    out_dir: str | Path,
    which: Literal["teacher", "student"] = "teacher",
) -> dict[str, Path]:
    """Write ``backbone.ckpt`` (TorchGeo), ``backbone.safetensors`` (timm) and ``backbone.json``.

    Both weight files hold the same tensors, shaped as ``timm.create_model(model,
    in_chans=C)`` builds them (position embeddings resampled to the architecture's default
    image size), so TorchGeo's ``Classification(model=..., weights=backbone.ckpt)``, timm and
    geodino all load them unchanged. A backbone trained with architecture overrides (e.g.
    fewer blocks) cannot match timm's default build of its name: it is exported at its own
    shape, the sidecar records the overrides (``torchgeo_compatible: false``), its
    ``backbone.ckpt`` names the model under ``geodino_model`` so that TorchGeo refuses it
    rather than loading part of it, and geodino's tasks load it.

    Args:
        checkpoint: a ``geodino fit`` checkpoint.
        out_dir: folder to write into.
        which: ``teacher`` or ``student`` backbone.

    Returns:
        the written paths by kind (``ckpt``, ``safetensors``, ``json``).
    """
    ckpt = load_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp or "in_chans" not in hp:
        raise WeightsError(
            f"{checkpoint} has no geodino hyper-parameters (model, in_chans): export takes "
            "the checkpoints that `geodino fit` writes."
        )
    model_kwargs = dict(hp.get("model_kwargs") or {})
    if hp.get("modalities"):  # a FusionViT: its modalities and fusion are its architecture
        model_kwargs = {
            "modalities": dict(hp["modalities"]),
            "fusion": hp.get("fusion", "early"),
            **dict(hp.get("fusion_kwargs") or {}),
            **model_kwargs,
        }
    statistics = (ckpt.get(_datamodule_key(ckpt)) or {}).get("statistics")
    return write_export(
        backbone_state_dict(ckpt, which),
        out_dir,
        hp["model"],
        int(hp["in_chans"]),
        model_kwargs=model_kwargs,
        bands=hp.get("band_names") or (statistics or {}).get("band_names"),
        statistics=statistics,
        extra={
            "which": which,
            "source_checkpoint": str(Path(checkpoint).resolve()),
            "global_step": ckpt.get("global_step"),
        },
    )


def write_export(
    state: dict[str, Tensor],
    out_dir: str | Path,
    model: str,
    in_chans: int,
    model_kwargs: dict[str, Any] | None = None,
    bands: list[str] | None = None,
    statistics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write backbone weights as an export folder (what :func:`export_backbone` writes).

    Args:
        state: timm-keyed backbone weights (e.g. ``model.state_dict()`` of a timm ViT).
        out_dir: folder to write into.
        model: timm architecture name.
        in_chans: number of input bands.
        model_kwargs: the ``timm.create_model`` arguments the backbone was built with; size
            arguments (``img_size``...) are dropped and the training image size is recorded.
        bands: band names, in channel order.
        statistics: per-band statistics (``BandStatistics`` as a dict) used in training.
        extra: more sidecar entries (e.g. the source checkpoint).

    Returns:
        the written paths by kind (``ckpt``, ``safetensors``, ``json``).

    Raises:
        WeightsError: if the weights do not fit the architecture.
    """
    import timm
    from safetensors.torch import save_file

    model_kwargs = dict(model_kwargs or {})
    arch_kwargs = {k: v for k, v in model_kwargs.items() if k not in _SIZE_KWARGS}
    if arch_kwargs:
        log.warning(
            "%s was trained with architecture overrides %s: timm's and TorchGeo's default "
            "build of it will not match; load it with geodino (load_backbone, build_backbone "
            "or geodino.tasks).",
            model,
            arch_kwargs,
        )
    if "modalities" in arch_kwargs:
        from geodino.models.fusion import FusionViT

        reference: Any = FusionViT(model, **arch_kwargs)
    else:
        reference = timm.create_model(model, pretrained=False, in_chans=in_chans, **arch_kwargs)
    state = {k: v.contiguous() for k, v in resample_to_default(state, reference).items()}
    train_size = model_kwargs.get("img_size")
    grid, patch = _geometry(reference)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": model,
        "in_chans": in_chans,
        "model_kwargs": arch_kwargs,
        "img_size": [g * patch for g in grid],
        "train_img_size": int(train_size) if isinstance(train_size, int) else None,
        "patch_size": patch,
        "num_prefix_tokens": int(reference.num_prefix_tokens),
        "embed_dim": int(reference.embed_dim),
        "bands": list(bands or []),
        "statistics": statistics,
        **(extra or {}),
        "torchgeo_compatible": not arch_kwargs,
        "geodino_version": __version__,
    }
    paths = {
        "ckpt": out / "backbone.ckpt",
        "safetensors": out / "backbone.safetensors",
        "json": out / "backbone.json",
    }
    # TorchGeo builds timm's default architecture of the name and loads with strict=False: a
    # shallower backbone of the same width would load partly and silently keep random blocks.
    # Without `model`, TorchGeo refuses the file instead; geodino reads it either way.
    name_key = "model" if not arch_kwargs else "geodino_model"
    torch.save(
        {
            "hyper_parameters": {name_key: model, "in_channels": in_chans, "in_chans": in_chans},
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "geodino": meta,
        },
        paths["ckpt"],
    )
    save_file(state, str(paths["safetensors"]), metadata={"model": model, "format": "pt"})
    paths["json"].write_text(json.dumps(meta, indent=2))
    return paths


@dataclass
class PretrainedBackbone:
    """A frozen backbone with what it needs to read data: bands and band statistics.

    Args:
        model: the timm ViT, in eval mode.
        band_names: the bands it was trained on, in channel order (empty if unknown).
        statistics: the band statistics it was trained with (None if unknown).
        source: the export folder or checkpoint it was read from.
        meta: the export sidecar (``backbone.json``) or what the checkpoint tells of it.
    """

    model: "VisionTransformer"
    band_names: list[str]
    statistics: "BandStatistics | None"
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        """Number of input bands."""
        return int(self.model.patch_embed.proj.in_channels)

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        from geodino.models import patch_size

        return patch_size(self.model)

    @property
    def embed_dim(self) -> int:
        """Width of the tokens."""
        return int(self.model.embed_dim)

    @property
    def chip_size(self) -> int:
        """The image size it was trained at (224 px if unknown)."""
        return int(self.meta.get("train_img_size") or 224)

    def check_bands(self, band_names: Sequence[str] | None, count: int, source: str) -> None:
        """Refuse data whose bands are not the backbone's.

        Args:
            band_names: names of the data's bands (None or empty when the data has none).
            count: number of bands of the data.
            source: the data's name, for the message.

        Raises:
            DataError: if the band count differs, or both sides name their bands differently.
        """
        if count != self.in_chans:
            raise DataError(
                f"{source} has {count} bands but the backbone ({self.source}) takes "
                f"{self.in_chans} ({self.band_names or 'unnamed'}); give data with the "
                "backbone's bands, in its order."
            )
        if band_names and self.band_names:
            from geodino.models.backbones import _band_key

            if [_band_key(b) for b in band_names] != [_band_key(b) for b in self.band_names]:
                raise DataError(
                    f"{source} has bands {list(band_names)} but the backbone ({self.source}) "
                    f"was trained on {self.band_names}; reorder or select the data's bands "
                    "to match."
                )

    def normalize(self, images: Tensor) -> Tensor:
        """Fill nodata and standardise raw images with the training statistics.

        Without statistics, images are taken as already normalised (nodata becomes 0).

        Args:
            images: (B, C, H, W) raw values.

        Returns:
            the backbone's input.
        """
        if self.statistics is None:
            return torch.nan_to_num(images.float())
        from geodino.transforms.normalize import Normalize

        normalize = Normalize.from_statistics(self.statistics).to(images.device)
        return normalize(normalize.fill_nodata(images.float()))

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """Normalised tokens [CLS, registers, patches] of raw images.

        Args:
            images: (B, C, H, W) raw values.

        Returns:
            (B, 1 + R + N, D) tokens.
        """
        from geodino.models import forward_tokens

        return forward_tokens(self.model, self.normalize(images))


def load_backbone(
    source: str | Path, which: Literal["teacher", "student"] = "teacher"
) -> PretrainedBackbone:
    """Read a frozen backbone from an export folder or a ``geodino fit`` checkpoint.

    Args:
        source: a folder written by ``geodino export`` (or its ``backbone.safetensors``), or a
            training checkpoint (``.ckpt``).
        which: for checkpoints, the ``teacher`` (EMA) or ``student`` backbone.

    Returns:
        the backbone in eval mode, with its bands and statistics.

    Raises:
        WeightsError: if ``source`` is neither, or its files are missing or damaged.
    """
    from geodino.models import build_backbone
    from geodino.transforms.normalize import BandStatistics

    path = Path(source)
    if path.is_dir():
        path = path / "backbone.safetensors"
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise WeightsError(
                f"{path.parent} is not a geodino export: it needs backbone.safetensors and "
                "backbone.json; write them with `geodino export CKPT OUT_DIR`."
            )
        try:
            meta = json.loads(sidecar.read_text())
            name, in_chans = meta["model"], int(meta["in_chans"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WeightsError(
                f"{sidecar} is not a valid export sidecar ({type(error).__name__}: {error}); "
                "export the backbone again."
            ) from None
        bands = list(meta.get("bands") or [])
        if "modalities" in (meta.get("model_kwargs") or {}):
            raise WeightsError(
                f"{path.parent} holds a multimodal FusionViT ({meta['model_kwargs']['modalities']}"
                "); embeddings and evaluation take single-modality backbones so far. Fine-tune "
                "it with geodino.tasks.Segmentation(weights=...), which builds fusion exports."
            )
        model = build_backbone(
            name,
            in_chans,
            weights=path,
            band_names=bands or None,
            **dict(meta.get("model_kwargs") or {}),
        )
        stats = meta.get("statistics")
    else:
        ckpt = load_checkpoint(path)
        hp = ckpt.get("hyper_parameters", {})
        if "model" not in hp or "in_chans" not in hp:
            raise WeightsError(
                f"{path} is neither a geodino export folder nor a `geodino fit` checkpoint "
                "(no model/in_chans hyper-parameters)."
            )
        model_kwargs = dict(hp.get("model_kwargs") or {})
        model = build_backbone(hp["model"], int(hp["in_chans"]), **model_kwargs)
        model.load_state_dict(backbone_state_dict(ckpt, which), strict=False)
        stats = (ckpt.get(_datamodule_key(ckpt)) or {}).get("statistics")
        bands = list(hp.get("band_names") or (stats or {}).get("band_names") or [])
        size = model_kwargs.get("img_size")
        meta = {"model": hp["model"], "train_img_size": size if isinstance(size, int) else None}
    statistics = BandStatistics(**stats) if stats else None
    return PretrainedBackbone(model.eval(), bands, statistics, str(source), meta)


def _geometry(model: Any) -> tuple[tuple[int, int], int]:
    """Position grid and patch side of a timm ViT or a FusionViT."""
    if hasattr(model, "patch_embed"):
        return tuple(model.patch_embed.grid_size), int(model.patch_embed.patch_size[0])
    return tuple(model.grid_size), int(model.patch_size)


def _datamodule_key(checkpoint: dict[str, Any]) -> str:
    for key, value in checkpoint.items():
        if isinstance(value, dict) and "samples_seen" in value:
            return key
    return ""
