"""Fine-tuning encoders built from ``geodino export`` folders."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geodino.errors import ConfigError, WeightsError
from geodino.export import BackboneSpec, read_export
from geodino.models import EncoderModule, TimmViTEncoder, build_backbone
from geodino.weights_io import read_safetensors

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


def export_folder(weights: object) -> Path | None:
    """The export a fine-tuning task was given as TorchGeo's ``weights`` (None: random).

    Args:
        weights: the task's ``weights`` attribute.

    Returns:
        the export path, or None.

    Raises:
        ConfigError: for anything but a path.
    """
    if weights is None or weights is False:
        return None
    if isinstance(weights, str | Path):
        return Path(weights)
    raise ConfigError(
        f"weights={weights!r}: geodino's fine-tuning tasks take a `geodino export` folder "
        "(or None for a randomly initialised backbone)."
    )


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
    export = read_export(weights)
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
) -> EncoderModule:
    """An encoder that takes any input size divisible by its patch, from an export or random.

    Args:
        weights: export folder, or None for random initialisation.
        model: timm name (as :func:`resolve_architecture` returns it).
        in_channels: number of input bands.
        model_kwargs: architecture arguments (with ``modalities``, a multimodal encoder).
        img_size: size to build the position grid for (resampled once); None keeps the
            export's grid (timm's default size), so every tensor equals the exported one.

    Returns:
        the encoder (a :class:`~geodino.models.FusionViT` when the architecture arguments
        name ``modalities``); any chip size that the patch size divides goes through it.

    Raises:
        ConfigError: if the modalities' bands do not add up to ``in_channels``.
        WeightsError: if the export's weights do not fit its architecture.
    """
    kwargs = {**dict(model_kwargs or {}), "dynamic_img_size": True}
    if img_size is not None:
        kwargs["img_size"] = img_size
    spec = BackboneSpec(model, in_channels, kwargs)
    if spec.modalities is not None:
        return _build_fusion(weights, spec)
    if weights is None:
        return spec.build()
    export = read_export(weights)
    return BackboneSpec(model, in_channels, kwargs, export.bands).build(export.weights)


def build_classifier(
    weights: str | Path | None,
    model: str,
    in_channels: int,
    num_classes: int,
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | None = None,
) -> TimmViTEncoder:
    """A timm ViT with a classifier head, from an export or random (see :func:`build_encoder`).

    Args:
        weights: export folder, or None for random initialisation.
        model: timm name.
        in_channels: number of input bands.
        num_classes: outputs of timm's classifier head.
        model_kwargs: architecture arguments.
        img_size: size to build the position grid for; None keeps the export's grid.

    Returns:
        the ViT with its head.

    Raises:
        ConfigError: if the architecture is a multimodal FusionViT.
    """
    kwargs = {**dict(model_kwargs or {}), "num_classes": num_classes, "dynamic_img_size": True}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if "modalities" in kwargs:
        raise ConfigError(
            f"the backbone {weights or model} is a multimodal FusionViT ({kwargs['modalities']}); "
            "classification takes single-modality ViTs. Use geodino.tasks.Segmentation, or "
            "embeddings with `geodino probe`, for fusion backbones."
        )
    if weights is None:
        return build_backbone(model, in_channels, **kwargs)
    export = read_export(weights)
    return build_backbone(
        model, in_channels, weights=export.weights, band_names=export.bands or None, **kwargs
    )


def _build_fusion(weights: str | Path | None, spec: BackboneSpec) -> EncoderModule:
    """A FusionViT (multimodal export) with the export's weights, position grid resampled."""
    from timm.layers.pos_embed import resample_abs_pos_embed

    encoder = spec.build()
    bands = sum((spec.modalities or {}).values())
    if bands != spec.in_chans:
        raise ConfigError(
            f"in_channels={spec.in_chans} but the modalities {spec.modalities} have {bands} "
            "bands; give their bands stacked in order."
        )
    if weights is None:
        return encoder
    export = read_export(weights)
    state = read_safetensors(export.weights or Path(weights))
    arch = encoder.architecture()
    pos = state.get("pos_embed")
    target = encoder.state_dict().get("pos_embed")
    if pos is not None and target is not None and pos.shape != target.shape:
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(arch.grid_size),
            num_prefix_tokens=arch.position_prefix,
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
