"""Export a pretrained backbone for TorchGeo, timm and geodino."""

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from geodino import __version__
from geodino.checkpoints import load_checkpoint
from geodino.errors import WeightsError

log = logging.getLogger(__name__)

#: timm keyword arguments that change only the input size handling, not the weights' shapes
#: beyond the position embedding (which export resamples).
_SIZE_KWARGS = {"img_size", "dynamic_img_size", "dynamic_img_pad"}


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
        k[len(prefix):]: v for k, v in checkpoint.get("state_dict", {}).items()
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
        grid = model.patch_embed.grid_size
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items() if k in target and v.shape != target[k].shape
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
    shape, the sidecar records the overrides, and only geodino's tasks load it.

    Args:
        checkpoint: a ``geodino fit`` checkpoint.
        out_dir: folder to write into.
        which: ``teacher`` or ``student`` backbone.

    Returns:
        the written paths by kind (``ckpt``, ``safetensors``, ``json``).
    """
    import timm
    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp or "in_chans" not in hp:
        raise WeightsError(
            f"{checkpoint} has no geodino hyper-parameters (model, in_chans): export takes "
            "the checkpoints that `geodino fit` writes."
        )
    name, in_chans = hp["model"], int(hp["in_chans"])
    model_kwargs = dict(hp.get("model_kwargs") or {})
    state = backbone_state_dict(ckpt, which)
    arch_kwargs = {k: v for k, v in model_kwargs.items() if k not in _SIZE_KWARGS}
    if arch_kwargs:
        log.warning(
            "%s was trained with architecture overrides %s: timm's and TorchGeo's default "
            "build of %s will not match; load it with geodino (build_backbone or "
            "geodino.tasks).", checkpoint, arch_kwargs, name,
        )
    reference = timm.create_model(name, pretrained=False, in_chans=in_chans, **arch_kwargs)
    state = {k: v.contiguous() for k, v in resample_to_default(state, reference).items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    statistics = (ckpt.get(_datamodule_key(ckpt)) or {}).get("statistics")
    meta = {
        "model": name,
        "in_chans": in_chans,
        "model_kwargs": arch_kwargs,
        "img_size": list(reference.patch_embed.img_size),
        "patch_size": int(reference.patch_embed.patch_size[0]),
        "num_prefix_tokens": int(reference.num_prefix_tokens),
        "embed_dim": int(reference.embed_dim),
        "bands": list(hp.get("band_names") or (statistics or {}).get("band_names") or []),
        "statistics": statistics,
        "which": which,
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "global_step": ckpt.get("global_step"),
        "torchgeo_compatible": not arch_kwargs,
        "geodino_version": __version__,
    }
    paths = {
        "ckpt": out / "backbone.ckpt",
        "safetensors": out / "backbone.safetensors",
        "json": out / "backbone.json",
    }
    torch.save(
        {
            "hyper_parameters": {"model": name, "in_channels": in_chans, "in_chans": in_chans},
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "geodino": meta,
        },
        paths["ckpt"],
    )
    save_file(state, str(paths["safetensors"]), metadata={"model": name, "format": "pt"})
    paths["json"].write_text(json.dumps(meta, indent=2))
    return paths


def _datamodule_key(checkpoint: dict[str, Any]) -> str:
    for key, value in checkpoint.items():
        if isinstance(value, dict) and "samples_seen" in value:
            return key
    return ""
