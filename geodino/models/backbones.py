"""timm DINOv2-family ViTs: building, loading official/TorchGeo/geodino weights.

Weights are read from local files only (``torch.load(weights_only=True)`` or safetensors),
converted to timm's layout, adapted to the data's bands and checked against the model.
"""

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models import VisionTransformer, adapt_input_conv
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from geodino.bands import canonical_s2_band
from geodino.errors import ConfigError, WeightsError
from geodino.models.encoder import EncoderInput
from geodino.models.timm_adapter import TimmViTEncoder, as_encoder
from geodino.weights_io import read_weights

log = logging.getLogger(__name__)

#: Band names of the RGB weights that official DINOv2 and most timm checkpoints carry.
RGB_BANDS = ("red", "green", "blue")
#: Common names that mean the same Sentinel-2 band.
_SYNONYMS = {
    "red": "B04",
    "r": "B04",
    "green": "B03",
    "g": "B03",
    "blue": "B02",
    "b": "B02",
    "nir": "B08",
    "coastal": "B01",
    "swir1": "B11",
    "swir2": "B12",
    "b8a": "B8A",
}
#: Prefixes under which checkpoints nest the backbone, most wanted first.
_PREFIXES = (
    "teacher.backbone.",
    "backbone.",
    "model.",
    "module.backbone.",
    "module.",
    "encoder.",
    "student.backbone.",
)
_PATCH = "patch_embed.proj.weight"


def band_key(name: str) -> str:
    """The name under which a band matches the same band of other data or weights.

    Args:
        name: a band name (``red``, ``B4``, ``B04``...).

    Returns:
        the canonical Sentinel-2 name for known synonyms, else the name in lower case.
    """
    key = name.strip().lower()
    return canonical_s2_band(_SYNONYMS.get(key, key))


#: The former private name, still imported by ``geodino.plotting``.
_band_key = band_key


# --- reading weight files ---------------------------------------------------------------
def _tensors(obj: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The backbone tensors inside a checkpoint, prefixes removed (teacher preferred)."""
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}

    def is_backbone(keys: Any) -> bool:
        return any(k.startswith(("blocks.", "patch_embed.")) for k in keys)

    for prefix in _PREFIXES:
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if is_backbone(picked):
            return picked
    if not is_backbone(state):
        raise WeightsError(
            f"{path} holds no ViT backbone weights (no 'blocks.*' or 'patch_embed.*' keys, "
            f"found e.g. {sorted(state)[:4]}); expected an official DINOv2, TorchGeo, timm or "
            "geodino checkpoint."
        )
    return state


def _source_bands(
    weights: "Path | WeightsEnum", path: Path, obj: Mapping[str, Any]
) -> list[str] | None:
    """Band names the weights were trained on: enum meta, export metadata or sidecar."""
    candidates: list[Any] = []
    if isinstance(weights, WeightsEnum) and isinstance(weights.meta, Mapping):
        candidates.append(weights.meta.get("bands"))
    for key in ("geodino", "hyper_parameters"):
        if isinstance(obj.get(key), Mapping):
            candidates += [obj[key].get("bands"), obj[key].get("band_names")]
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            text = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise WeightsError(
                f"{sidecar} (the band metadata beside {path.name}) is not valid JSON ({error}); "
                "export the backbone again or delete the sidecar."
            ) from None
        if isinstance(text, Mapping):
            candidates.append(text.get("bands"))
    for bands in candidates:
        if bands:
            return [str(b) for b in bands]
    return None


def _torchgeo_enum(name: str) -> "WeightsEnum":
    from torchgeo.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(
            f"{name!r} is neither a file nor a TorchGeo weights enum; give a path or a name "
            "such as 'ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON'."
        ) from None


def load_weights_file(
    weights: "str | Path | WeightsEnum",
) -> tuple[dict[str, Tensor], Path, list[str] | None]:
    """Read backbone tensors from a local file or a TorchGeo weights enum (local cache only).

    Args:
        weights: a path, or a TorchGeo ``WeightsEnum`` member (or its name, e.g.
            ``"ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON"``, as configs give it) whose
            file lies in ``torch.hub.get_dir()/checkpoints``.

    Returns:
        the tensors (prefixes removed), the file read, and the band names the weights were
        trained on (None if unknown).

    Raises:
        WeightsError: if the file is missing, damaged, would run code, or holds no backbone.
    """
    if (
        isinstance(weights, str)
        and re.fullmatch(r"\w+_Weights\.\w+", weights)
        and not Path(weights).is_file()
    ):
        weights = _torchgeo_enum(weights)
    if isinstance(weights, WeightsEnum):
        name = Path(str(weights.url).split("?")[0]).name
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if not path.is_file():
            raise WeightsError(
                f"{weights} is not in the local cache: geodino never downloads weights. Fetch "
                f"{weights.url} once (on a machine with access) and put it at {path} "
                "(or set TORCH_HOME to the folder whose hub/checkpoints holds it)."
            )
        source: Path | WeightsEnum = weights
    else:
        path = source = Path(weights)
    obj = read_weights(path)
    return _tensors(obj, path), path, _source_bands(source, path, obj)


def load_mask_token(weights: "str | Path | WeightsEnum") -> Tensor | None:
    """The iBOT mask token that official DINOv2 weights carry (None if they carry none).

    Args:
        weights: as for :func:`build_backbone`.

    Returns:
        (1, D) token or None.

    Raises:
        WeightsError: as :func:`load_weights_file`.
    """
    token = official_mask_token(load_weights_file(weights)[0])
    return None if token is None else token.reshape(1, -1)


# --- conversion -------------------------------------------------------------------------
def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], model: VisionTransformer
) -> dict[str, Tensor]:
    """Official DINOv2 keys (hub or chunked training format) -> timm keys of ``model``.

    Chunked ``blocks.c.i.*`` keys become ``blocks.i.*``, SwiGLU ``w12``/``w3`` become
    ``fc1``/``fc2``, ``register_tokens`` becomes ``reg_token``, and the position embedding's
    prefix is matched to the model's (see :func:`match_position_prefix`). ``mask_token`` is
    not part of the timm model and is dropped (see :func:`official_mask_token`).

    Args:
        state_dict: official backbone weights.
        model: the timm model they are for.

    Returns:
        timm-keyed weights.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key == "mask_token":
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        key = key.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.")
        out["reg_token" if key == "register_tokens" else key] = value
    return match_position_prefix(out, model)


def official_mask_token(state_dict: Mapping[str, Tensor]) -> Tensor | None:
    """The iBOT mask token of official weights, if they carry one.

    Args:
        state_dict: official backbone weights.

    Returns:
        the token as stored, or None.
    """
    return state_dict.get("mask_token")


def _prefix_positions(n_positions: int, candidates: Sequence[int]) -> int | None:
    for prefix in candidates:
        side = math.isqrt(max(n_positions - prefix, 0))
        if side > 0 and side * side == n_positions - prefix:
            return prefix
    return None


def match_position_prefix(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """Give the weights' position embedding the prefix (class/register) positions ``model`` has.

    Official DINOv2 has a position for the class token only; timm models have none
    (``no_embed_class``, e.g. the ``reg4`` family) or one per prefix token. A class position
    the model lacks is folded into ``cls_token`` (the model adds both to the same token);
    prefix positions the weights lack start at zero (the weights added nothing there). Both
    keep the computation exactly the same.

    Args:
        state: timm-keyed weights with the source's position embedding.
        model: the target model.

    Returns:
        the weights with a position embedding of the model's prefix length.
    """
    pos = state.get("pos_embed")
    if pos is None or model.pos_embed is None:
        return state
    wanted = 0 if model.no_embed_class else model.num_prefix_tokens
    have = _prefix_positions(pos.shape[1], [wanted, 1, 0, model.num_prefix_tokens])
    if have is None or have == wanted:
        return state
    state = dict(state)
    if have > 0 and wanted == 0:
        if "cls_token" in state:
            state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, have:]
    elif have < wanted:
        pad = pos.new_zeros(1, wanted - have, pos.shape[2])
        state["pos_embed"] = torch.cat([pos[:, :have], pad, pos[:, have:]], dim=1)
    else:
        state["pos_embed"] = torch.cat([pos[:, :wanted], pos[:, have:]], dim=1)
    return state


def _is_official(state: Mapping[str, Tensor]) -> bool:
    return (
        "mask_token" in state
        or "register_tokens" in state
        or any(re.match(r"blocks\.\d+\.\d+\.", k) or ".mlp.w12." in k for k in state)
    )


def adapt_patch_embed(
    weight: Tensor,
    in_chans: int,
    source_bands: Sequence[str] | None,
    band_names: Sequence[str] | None,
) -> Tensor:
    """Give a patch-embedding weight ``in_chans`` input bands, matching bands by name.

    Bands known on both sides (e.g. RGB red/green/blue -> Sentinel-2 B04/B03/B02) keep their
    filters exactly. Every other target band gets the mean of the source filters scaled by
    ``source bands / in_chans``, the weight timm's channel repetition gives each band, so an
    unknown band contributes as it would under timm's adaptation. Without any shared band
    name, timm's channel repetition (``adapt_input_conv``) is used.

    Args:
        weight: (D, C_src, p, p) patch embedding weight.
        in_chans: target band count.
        source_bands: names of the weight's bands, if known (3 unnamed bands mean RGB).
        band_names: names of the target bands, if known.

    Returns:
        (D, in_chans, p, p) weight.

    Raises:
        WeightsError: if the weight cannot be adapted.
    """
    src = weight.shape[1]
    if source_bands is None and src == 3:
        source_bands = RGB_BANDS
    if source_bands and band_names and len(source_bands) == src and len(band_names) == in_chans:
        index = {band_key(b): i for i, b in enumerate(source_bands)}
        matches = [index.get(band_key(b)) for b in band_names]
        if any(m is not None for m in matches):
            unmatched = weight.float().mean(dim=1) * (src / in_chans)
            out = weight.new_empty(weight.shape[0], in_chans, *weight.shape[2:])
            for target, source in enumerate(matches):
                out[:, target] = unmatched if source is None else weight[:, source]
            log.info(
                "patch embedding: bands %s take the filters of %s; %s start from the scaled "
                "mean filter",
                [b for b, m in zip(band_names, matches, strict=True) if m is not None],
                [source_bands[m] for m in matches if m is not None],
                [b for b, m in zip(band_names, matches, strict=True) if m is None],
            )
            return out
    if src == in_chans:
        return weight
    try:
        return adapt_input_conv(in_chans, weight, base_chans=src)
    except (NotImplementedError, ValueError) as error:
        raise WeightsError(
            f"cannot adapt a {src}-band patch embedding {tuple(weight.shape)} to {in_chans} "
            f"bands ({error}); pass band_names so bands can be matched by name."
        ) from None


def fit_state_dict(
    state: dict[str, Tensor],
    model: VisionTransformer,
    source: str,
    source_bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Shape weights for ``model``: official keys, architecture check, bands, position grid.

    Args:
        state: backbone weights (official or timm keys).
        model: the target model.
        source: where the weights came from, for messages.
        source_bands: band names of the weights, if known.
        band_names: band names of the target, if known.

    Returns:
        weights ready for ``model.load_state_dict(..., strict=False)`` (only the
        classifier head may be missing).

    Raises:
        WeightsError: naming the file, the key and both shapes when the architecture differs.
    """
    if _is_official(state):
        state = convert_official_state_dict(state, model)
    else:
        state = match_position_prefix(dict(state), model)
    target = model.state_dict()

    def mismatch(name: str, value: Tensor, why: str) -> WeightsError:
        return WeightsError(
            f"{source}: '{name}' has shape {tuple(value.shape)} but the model expects "
            f"{tuple(target[name].shape)} ({why}); the weights are for another architecture. "
            "Pick the matching `model` name or architecture arguments."
        )

    # the shapes the loader may adapt (bands, position grid) must agree in everything else
    for name, value in state.items():
        if name not in target or value.shape == target[name].shape:
            continue
        if name == _PATCH and value.ndim == 4 and value.shape[0] == target[name].shape[0]:
            if value.shape[2:] != target[name].shape[2:]:
                raise mismatch(name, value, "patch size differs")
            continue
        if name == "pos_embed" and value.shape[2] == target[name].shape[2]:
            continue
        raise mismatch(name, value, "width, register count or layer layout differs")
    for token in ("reg_token", "cls_token"):
        if token in state and token not in target:
            raise WeightsError(
                f"{source} has '{token}' {tuple(state[token].shape)} but the model has none; "
                "the weights were trained with it. Pick a model that has it (e.g. a '_reg4_' "
                "name for register tokens)."
            )
    depth = len(model.blocks)
    extra = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if extra and extra[-1] >= depth:
        raise WeightsError(
            f"{source} has {extra[-1] + 1} blocks but the model has {depth} (e.g. key "
            f"'blocks.{extra[-1]}.norm1.weight' has no place); pick the matching depth."
        )

    if _PATCH in state:
        weight, bands = state[_PATCH], list(band_names or [])
        reorder = (
            source_bands is not None
            and len(source_bands) == len(bands) == weight.shape[1]
            and [band_key(b) for b in source_bands] != [band_key(b) for b in bands]
        )
        if weight.shape[1] != target[_PATCH].shape[1] or reorder:
            state[_PATCH] = adapt_patch_embed(
                weight, target[_PATCH].shape[1], source_bands, band_names
            ).to(weight.dtype)
    if "pos_embed" in state and state["pos_embed"].shape != target["pos_embed"].shape:
        pos = state["pos_embed"]
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        if _prefix_positions(pos.shape[1], [prefix]) is None:
            raise mismatch("pos_embed", pos, "not a square grid after the prefix positions")
        # bicubic with anti-aliasing on a square grid, to the grid's size: the official
        # interpolate_pos_encoding (interpolate_offset 0) does the same interpolation
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=True,
        )

    missing = sorted(set(target) - set(state) - {"head.weight", "head.bias"})
    if missing == ["reg_token"]:
        log.warning("%s has no register tokens; they start from their initialisation", source)
    elif missing:
        raise WeightsError(
            f"{source} lacks {missing[:6]}{'...' if len(missing) > 6 else ''} that the model "
            "needs; the weights are for another architecture (e.g. registers, class token "
            "or layer scale differ). Pick the matching `model` name."
        )
    unexpected = sorted(set(state) - set(target))
    if unexpected:
        log.info("%s: ignoring keys that are not part of the backbone: %s", source, unexpected[:8])
    return {k: v for k, v in state.items() if k in target}


def _native_img_size(state: Mapping[str, Tensor]) -> int | None:
    """Image size at which the weights' position grid needs no resampling (square grids)."""
    pos, patch = state.get("pos_embed"), state.get(_PATCH)
    if pos is None or patch is None or patch.ndim != 4:
        return None
    prefix = 1 if "register_tokens" in state or "mask_token" in state else None
    candidates = [prefix] if prefix is not None else [0, 1]
    have = _prefix_positions(pos.shape[1], candidates)
    if have is None:
        return None
    return math.isqrt(pos.shape[1] - have) * patch.shape[-1]


# --- building ---------------------------------------------------------------------------
def build_backbone(
    arch: str,
    in_chans: int,
    weights: "str | Path | WeightsEnum | None" = None,
    band_names: Sequence[str] | None = None,
    **timm_kwargs: Any,
) -> TimmViTEncoder:
    """A timm ViT with any band count, dynamic input size and optional initial weights.

    Without ``img_size``, a model given weights is built at the weights' own position grid
    (e.g. 518 px for official DINOv2, 224 px for TorchGeo's SoftCon), so that each input size
    resamples the original grid once, as the official code does.

    Args:
        arch: timm name, e.g. ``vit_small_patch14_reg4_dinov2`` (any timm ViT works).
        in_chans: number of input bands.
        weights: local file (official DINOv2 hub or training format, TorchGeo, timm or geodino
            export) or a TorchGeo weights enum (or its name) found in the local torch hub cache.
        band_names: names of the input bands, used to map the weights' bands.
        **timm_kwargs: more ``timm.create_model`` arguments (img_size, depth, embed_dim, ...).

    Returns:
        the model (no classifier unless ``num_classes`` is given), a timm
        ``VisionTransformer`` that implements :class:`~geodino.models.encoder.Encoder`.

    Raises:
        ConfigError: if timm cannot build ``arch`` or it is not a ViT.
        WeightsError: if the weights cannot be read or loaded into this architecture.
    """
    if band_names is not None and len(band_names) != in_chans:
        raise ConfigError(
            f"band_names has {len(band_names)} names ({list(band_names)}) but in_chans is "
            f"{in_chans}; give one name per input band."
        )
    state: dict[str, Tensor] | None = None
    source, source_bands = "", None
    if weights is not None:
        state, path, source_bands = load_weights_file(weights)
        source = str(path)
        if "img_size" not in timm_kwargs and (size := _native_img_size(state)):
            timm_kwargs["img_size"] = size
    timm_kwargs.setdefault("dynamic_img_size", True)
    timm_kwargs.setdefault("num_classes", 0)
    try:
        model = timm.create_model(arch, pretrained=False, in_chans=in_chans, **timm_kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"timm cannot build {arch!r} with {timm_kwargs} ({type(error).__name__}: {error}); "
            "use a timm ViT name such as 'vit_small_patch14_reg4_dinov2' and valid arguments."
        ) from None
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"{arch!r} is a {type(model).__name__}; geodino needs a timm VisionTransformer "
            "such as 'vit_small_patch14_reg4_dinov2'."
        )
    if state is not None:
        fitted = fit_state_dict(state, model, source, source_bands, band_names)
        model.load_state_dict(fitted, strict=False)
    return TimmViTEncoder.adopt(model, band_names)


def patch_size(model: nn.Module) -> int:
    """Side of a patch in pixels.

    Args:
        model: an encoder or a timm ViT.

    Returns:
        the patch side.
    """
    return as_encoder(model).patch_size


def forward_tokens(
    model: nn.Module,
    images: EncoderInput,
    masks: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> Tensor:
    """Normalised tokens [CLS, registers..., patches...] of an encoder, with iBOT masking.

    See :meth:`geodino.models.encoder.Encoder.forward_tokens`.

    Args:
        model: an encoder or a timm ViT.
        images: (B, C, H, W), or a dict of modality images for a multimodal encoder.
        masks: (B, N) bool, True where a patch is masked (N patches in row-major order).
        mask_token: (1, D) or (D,) learned token; required with ``masks``.

    Returns:
        (B, 1 + R + N, D) tokens after the final norm.

    Raises:
        ConfigError: if ``masks`` come without a token or do not fit the patch grid.
    """
    return as_encoder(model).forward_tokens(images, masks, mask_token)


def split_tokens(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split tokens into class token, registers and patch tokens.

    Args:
        model: the encoder (or timm ViT) that produced them.
        tokens: (B, 1 + R + N, D).

    Returns:
        (B, D) class token, (B, R, D) registers, (B, N, D) patches.
    """
    return as_encoder(model).split_tokens(tokens)
