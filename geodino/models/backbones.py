"""timm DINOv2-family ViTs: building, loading official/TorchGeo/geodino weights, tokens."""

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import VisionTransformer
from timm.models._manipulate import adapt_input_conv
from torch import Tensor

from geodino.errors import WeightsError

log = logging.getLogger(__name__)

#: Band names of the RGB weights that official DINOv2 and most timm checkpoints carry.
RGB_BANDS = ("red", "green", "blue")
#: Common names that mean the same Sentinel-2 band.
_SYNONYMS = {
    "red": "B04", "r": "B04", "green": "B03", "g": "B03", "blue": "B02", "b": "B02",
    "nir": "B08", "coastal": "B01", "swir1": "B11", "swir2": "B12", "b8a": "B8A",
}


def _band_key(name: str) -> str:
    key = name.strip().lower()
    key = _SYNONYMS.get(key, key).upper()
    match = re.fullmatch(r"B0?(\d{1,2})", key)
    return f"B{int(match.group(1)):02d}" if match else key


# --- reading weight files ---------------------------------------------------------------
def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise WeightsError(f"{path} is not a readable safetensors file ({error}).") from None
    from geodino.checkpoints import load_checkpoint

    return load_checkpoint(path)


def _tensors(obj: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The backbone tensors inside a checkpoint, prefixes removed (teacher preferred)."""
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("teacher.backbone.", "backbone.", "model.", "module.", "encoder."):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked and any(k.startswith(("blocks.", "patch_embed.")) for k in picked):
            return picked
    if not any(k.startswith(("blocks.", "patch_embed.")) for k in state):
        raise WeightsError(
            f"{path} holds no ViT backbone weights (no 'blocks.*' or 'patch_embed.*' keys); "
            "expected an official DINOv2, TorchGeo, timm or geodino checkpoint."
        )
    return state


def _source_bands(weights: Any, path: Path | None) -> list[str] | None:
    meta = getattr(weights, "meta", None)
    if isinstance(meta, dict) and meta.get("bands"):
        return list(meta["bands"])
    if path is not None:
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            bands = json.loads(sidecar.read_text()).get("bands")
            if bands:
                return list(bands)
    return None


def load_weights_file(weights: str | Path | Any) -> tuple[dict[str, Tensor], Path | None, list[str] | None]:
    """Read backbone tensors from a local file or a TorchGeo weights enum (local cache only).

    Args:
        weights: a path, or a TorchGeo ``WeightsEnum`` member whose file lies in
            ``torch.hub.get_dir()/checkpoints``.

    Returns:
        the tensors, the file read, and the band names the weights were trained on (if known).

    Raises:
        WeightsError: if the file is missing or unusable.
    """
    if hasattr(weights, "url") and hasattr(weights, "meta"):
        name = Path(str(weights.url).split("?")[0]).name
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if not path.is_file():
            raise WeightsError(
                f"{weights} is not in the local cache: geodino never downloads weights. Fetch "
                f"{weights.url} once and put it at {path}."
            )
    else:
        path = Path(weights)
    obj = _read(path)
    return _tensors(obj, path), path, _source_bands(weights, path)


# --- conversion -------------------------------------------------------------------------
def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], model: VisionTransformer
) -> dict[str, Tensor]:
    """Official DINOv2 keys (hub or chunked training format) -> timm keys of ``model``.

    Chunked ``blocks.c.i.*`` keys become ``blocks.i.*``, ``register_tokens`` becomes
    ``reg_token``, and for timm models whose position embedding excludes the class token
    (``no_embed_class``), the class position embedding is folded into ``cls_token``.
    ``mask_token`` is not part of the timm model and is dropped (see :func:`official_mask_token`).

    Args:
        state_dict: official backbone weights.
        model: the timm model they are for.

    Returns:
        timm-keyed weights.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        key = key.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.")
        if key == "mask_token":
            continue
        out["reg_token" if key == "register_tokens" else key] = value
    return _fold_class_position(out, model)


def official_mask_token(state_dict: Mapping[str, Tensor]) -> Tensor | None:
    """The iBOT mask token of official weights, if they carry one."""
    return state_dict.get("mask_token")


def _fold_class_position(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    pos = state.get("pos_embed")
    if pos is None or model.pos_embed is None or not model.no_embed_class:
        return state
    grid = pos.shape[1]
    if grid != int(grid**0.5) ** 2 and "cls_token" in state:
        # a class-token position in front of a square grid: fold it into the class token
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def _is_official(state: Mapping[str, Tensor]) -> bool:
    return "mask_token" in state or "register_tokens" in state or any(
        re.match(r"blocks\.\d+\.\d+\.", k) for k in state
    )


def adapt_patch_embed(
    weight: Tensor, in_chans: int, source_bands: Sequence[str] | None,
    band_names: Sequence[str] | None,
) -> Tensor:
    """Give a patch-embedding weight ``in_chans`` input bands.

    Bands known on both sides (e.g. RGB red/green/blue -> Sentinel-2 B04/B03/B02) keep their
    filters exactly; other target bands start at zero, so the model initially computes what
    the source model computed on the shared bands. Without any shared band name, timm's
    channel repetition (scaled to keep activations) is used.

    Args:
        weight: (D, C_src, p, p) patch embedding weight.
        in_chans: target band count.
        source_bands: names of the weight's bands, if known.
        band_names: names of the target bands, if known.

    Returns:
        (D, in_chans, p, p) weight.
    """
    src = weight.shape[1]
    if source_bands is None and src == 3:
        source_bands = RGB_BANDS
    if source_bands and band_names and len(source_bands) == src:
        index = {_band_key(b): i for i, b in enumerate(source_bands)}
        matches = [index.get(_band_key(b)) for b in band_names]
        if any(m is not None for m in matches):
            out = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
            for target, source in enumerate(matches):
                if source is not None:
                    out[:, target] = weight[:, source]
            log.info("patch embedding: bands %s taken from %s, others start at zero",
                     [b for b, m in zip(band_names, matches, strict=True) if m is not None],
                     list(source_bands))
            return out
    return adapt_input_conv(in_chans, weight)


def fit_state_dict(
    state: dict[str, Tensor],
    model: VisionTransformer,
    source: str,
    source_bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Shape weights for ``model``: official keys, band count, position grid.

    Args:
        state: backbone weights.
        model: the target model.
        source: where the weights came from, for messages.
        source_bands: band names of the weights, if known.
        band_names: band names of the target, if known.

    Returns:
        weights ready for ``model.load_state_dict``.

    Raises:
        WeightsError: naming the key and both shapes when the architecture differs.
    """
    if _is_official(state):
        state = convert_official_state_dict(state, model)
    else:
        state = _fold_class_position(dict(state), model)
    target = model.state_dict()
    key = "patch_embed.proj.weight"
    if key in state and state[key].shape[1] != target[key].shape[1]:
        state[key] = adapt_patch_embed(state[key], target[key].shape[1], source_bands, band_names)
    if "pos_embed" in state and state["pos_embed"].shape != target["pos_embed"].shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=prefix,
        )
    for name, value in state.items():
        if name in target and value.shape != target[name].shape:
            raise WeightsError(
                f"{source}: '{name}' has shape {tuple(value.shape)} but the model expects "
                f"{tuple(target[name].shape)}; the weights are for another architecture "
                "(embed dim, depth, patch size or heads). Pick the matching `model` name."
            )
    missing = sorted(set(target) - set(state) - {"head.weight", "head.bias"})
    if missing:
        if set(missing) <= {"reg_token"}:
            log.warning("%s has no register tokens; they start from their initialisation", source)
        else:
            raise WeightsError(
                f"{source} lacks {missing[:6]}{'...' if len(missing) > 6 else ''} that "
                f"{type(model).__name__} needs; the weights are for another architecture."
            )
    unexpected = sorted(set(state) - set(target))
    if unexpected:
        log.info("%s: ignoring keys not in the backbone: %s", source, unexpected[:8])
    return {k: v for k, v in state.items() if k in target}


# --- building ---------------------------------------------------------------------------
def build_backbone(
    arch: str,
    in_chans: int,
    weights: str | Path | Any | None = None,
    band_names: Sequence[str] | None = None,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A timm ViT with any band count, dynamic input size and optional initial weights.

    Args:
        arch: timm name, e.g. ``vit_small_patch14_reg4_dinov2`` (any timm ViT works).
        in_chans: number of input bands.
        weights: local file (official DINOv2 hub or training format, TorchGeo, timm or geodino
            export) or a TorchGeo weights enum found in the local torch hub cache.
        band_names: names of the input bands, used to map the weights' bands.
        **timm_kwargs: more ``timm.create_model`` arguments (img_size, depth, embed_dim, ...).

    Returns:
        the model, whose ``forward_features`` returns normalised [CLS, registers, patches].

    Raises:
        WeightsError: if the weights cannot be loaded into this architecture.
    """
    timm_kwargs.setdefault("dynamic_img_size", True)
    try:
        model = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=0,
                                  **timm_kwargs)
    except RuntimeError as error:
        raise WeightsError(f"timm cannot build {arch!r}: {error}") from None
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"{arch} is a {type(model).__name__}; geodino needs a timm ViT.")
    if weights is not None:
        state, path, source_bands = load_weights_file(weights)
        state = fit_state_dict(state, model, str(path or weights), source_bands, band_names)
        model.load_state_dict(state, strict=False)
    return model


def patch_size(model: VisionTransformer) -> int:
    """Side of a patch in pixels."""
    patch = model.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, tuple | list) else patch)


def forward_tokens(
    model: VisionTransformer,
    images: Tensor,
    masks: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> Tensor:
    """Normalised tokens [CLS, registers..., patches...] of a timm ViT, with iBOT masking.

    Masked patch embeddings are replaced by ``mask_token`` before position embeddings are
    added, as DINOv2's ``prepare_tokens_with_masks`` does.

    Args:
        model: the ViT.
        images: (B, C, H, W).
        masks: (B, N) bool, True where a patch is masked.
        mask_token: (1, D) or (D,) learned token.

    Returns:
        (B, 1 + R + N, D) tokens after the final norm.
    """
    if masks is None:
        return model.forward_features(images)
    x = model.patch_embed(images)
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    if mask_token is None:
        raise ValueError("masks given without a mask_token")
    flat = torch.where(masks.unsqueeze(-1), mask_token.reshape(1, 1, -1).to(flat.dtype), flat)
    x = model._pos_embed(flat.reshape(shape))
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    x = model.blocks(x)
    return model.norm(x)


def split_tokens(model: VisionTransformer, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split tokens into class token, registers and patch tokens.

    Args:
        model: the ViT that produced them.
        tokens: (B, 1 + R + N, D).

    Returns:
        (B, D) class token, (B, R, D) registers, (B, N, D) patches.
    """
    prefix = model.num_prefix_tokens
    return tokens[:, 0], tokens[:, 1:prefix], tokens[:, prefix:]
