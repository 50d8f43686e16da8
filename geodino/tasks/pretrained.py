"""Fine-tuning encoders built from ``geodino export`` folders."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timm.models import VisionTransformer

from geodino.errors import ConfigError, WeightsError
from geodino.models import build_backbone

if TYPE_CHECKING:
    from geodino.models.fusion import FusionViT

#: Arguments an export's architecture may not be overridden with (they would not fit it).
_ARCHITECTURE = {
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "reg_tokens",
    "class_token",
    "no_embed_class",
    "mlp_ratio",
    "init_values",
    "qkv_bias",
    "in_chans",
    "modalities",
    "fusion",
    "xattn_layers",
    "xattn_heads",
}


@dataclass(frozen=True)
class Export:
    """What a ``geodino export`` folder holds.

    Args:
        weights: the ``backbone.safetensors`` file.
        model: timm architecture name.
        in_chans: number of input bands.
        model_kwargs: architecture arguments the backbone was trained with.
        bands: band names in channel order (empty when unknown).
        statistics: per-band statistics used in pretraining (None when unknown).
    """

    weights: Path
    model: str
    in_chans: int
    model_kwargs: dict[str, Any]
    bands: list[str]
    statistics: dict[str, Any] | None

    @classmethod
    def read(cls, source: str | Path) -> "Export":
        """Read an export folder (or its ``backbone.safetensors`` / ``backbone.json``).

        Args:
            source: the folder ``geodino export`` wrote, or one of its files.

        Returns:
            the export's description.

        Raises:
            WeightsError: if the folder lacks the weights or a valid sidecar.
        """
        path = Path(source)
        folder = path if path.is_dir() else path.parent
        weights, sidecar = folder / "backbone.safetensors", folder / "backbone.json"
        if not weights.is_file() or not sidecar.is_file():
            raise WeightsError(
                f"{source} is not a geodino export: the folder needs backbone.safetensors and "
                "backbone.json; write them with `geodino export CKPT OUT_DIR` and pass the "
                "folder as `weights`."
            )
        try:
            meta = json.loads(sidecar.read_text())
            return cls(
                weights=weights,
                model=str(meta["model"]),
                in_chans=int(meta["in_chans"]),
                model_kwargs=dict(meta.get("model_kwargs") or {}),
                bands=[str(b) for b in meta.get("bands") or []],
                statistics=meta.get("statistics"),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WeightsError(
                f"{sidecar} is not a valid export sidecar ({type(error).__name__}: {error}); "
                "export the backbone again with `geodino export`."
            ) from None


def resolve_architecture(
    weights: str | Path | None,
    model: str | None,
    model_kwargs: Mapping[str, Any] | None,
    in_channels: int | None,
    model_arg: str = "model",
) -> tuple[str, dict[str, Any], int]:
    """The architecture a task builds: the export's when given, else the arguments'.

    Args:
        weights: export folder, or None for a randomly initialised backbone.
        model: timm name; without ``weights`` it is needed, with it it may only repeat the
            export's.
        model_kwargs: more ``timm.create_model`` arguments (with ``weights``, only those that
            leave the weights' shapes alone, such as ``drop_path_rate``).
        in_channels: number of input bands (None: the export's).
        model_arg: the task's name for ``model``, for messages.

    Returns:
        timm name, its arguments and the number of input bands.

    Raises:
        ConfigError: if the arguments contradict the export or no band count is known.
    """
    kwargs = dict(model_kwargs or {})
    if weights is None:
        if model is None or in_channels is None:
            raise ConfigError(
                f"without a `weights` export, give the timm `{model_arg}` name and `in_channels` "
                "(a randomly initialised backbone has no architecture or bands of its own)."
            )
        return model, kwargs, int(in_channels)
    export = Export.read(weights)
    if model is not None and model != export.model:
        raise ConfigError(
            f"{model_arg}={model!r} but the export {weights} holds a {export.model!r}; leave "
            f"{model_arg} unset (the export names it)."
        )
    if in_channels is not None and int(in_channels) != export.in_chans:
        raise ConfigError(
            f"in_channels={in_channels} but the export {weights} was pretrained on "
            f"{export.in_chans} bands {export.bands or ''}; give data with the export's bands "
            "and leave in_channels unset (or equal)."
        )
    clash = sorted(set(kwargs) & _ARCHITECTURE)
    if clash:
        raise ConfigError(
            f"model_kwargs {clash} would change the architecture of the export {weights} "
            f"({export.model} with {export.model_kwargs}); drop them (the export sets them)."
        )
    return export.model, {**export.model_kwargs, **kwargs}, export.in_chans


def build_encoder(
    weights: str | Path | None,
    model: str,
    in_channels: int,
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    **timm_kwargs: Any,
) -> "VisionTransformer | FusionViT":
    """A timm ViT that takes any input size divisible by its patch, from an export or random.

    Args:
        weights: export folder, or None for random initialisation.
        model: timm name (as :func:`resolve_architecture` returns it).
        in_channels: number of input bands.
        model_kwargs: architecture arguments.
        img_size: size to build the position grid for (resampled once); None keeps the
            export's grid (timm's default size), so every tensor equals the exported one.
        **timm_kwargs: more ``timm.create_model`` arguments (e.g. ``num_classes``).

    Returns:
        the model (a :class:`~geodino.models.FusionViT` when the architecture arguments name
        ``modalities``); any chip size that the patch size divides goes through it.
    """
    kwargs = {**dict(model_kwargs or {}), **timm_kwargs, "dynamic_img_size": True}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if "modalities" in kwargs:
        return _build_fusion(weights, model, in_channels, kwargs)
    if weights is None:
        return build_backbone(model, in_channels, **kwargs)
    export = Export.read(weights)
    return build_backbone(
        model, in_channels, weights=export.weights, band_names=export.bands or None, **kwargs
    )


def _build_fusion(
    weights: str | Path | None, model: str, in_channels: int, kwargs: dict[str, Any]
) -> "FusionViT":
    """A FusionViT (multimodal export) with the export's weights, position grid resampled."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    from geodino.models.fusion import FusionViT

    if "num_classes" in kwargs:
        raise ConfigError(
            f"the backbone {weights or model} is a multimodal FusionViT ({kwargs['modalities']}); "
            "classification takes single-modality ViTs. Use geodino.tasks.Segmentation, or "
            "embeddings with `geodino probe`, for fusion backbones."
        )
    encoder = FusionViT(model, **kwargs)
    bands = sum(encoder.modalities.values())
    if bands != in_channels:
        raise ConfigError(
            f"in_channels={in_channels} but the modalities {encoder.modalities} have {bands} "
            "bands; give their bands stacked in order."
        )
    if weights is None:
        return encoder
    export = Export.read(weights)
    state = load_file(str(export.weights))
    pos, target = state.get("pos_embed"), encoder.pos_embed
    if pos is not None and target is not None and pos.shape != target.shape:
        prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(encoder.grid_size),
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=True,
        )
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(
            f"{export.weights} does not fit the FusionViT its sidecar describes "
            f"({str(error).splitlines()[0]} ...); export the backbone again."
        ) from None
    return encoder
