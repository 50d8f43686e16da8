"""Export a pretrained backbone for TorchGeo, timm and geodino.

This module alone reads and writes the export format (``backbone.json`` +
``backbone.safetensors`` + ``backbone.ckpt``) and the backbone hyper-parameters of a
``geodino fit`` checkpoint, through two typed records: :class:`BackboneSpec` (the
architecture a backbone is built from) and :class:`ExportRecord` (the sidecar).
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from geodino import __version__
from geodino.errors import DataError, WeightsError
from geodino.weights_io import load_checkpoint

if TYPE_CHECKING:
    from geodino.models import EncoderModule, FusionViT, TimmViTEncoder
    from geodino.transforms.normalize import BandStatistics

log = logging.getLogger(__name__)

#: timm keyword arguments that change only the input size handling, not the weights' shapes
#: beyond the position embedding (which export resamples), or only regularise or initialise
#: training: neither is part of the exported architecture.
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
    "channel_query_std",
    "sar_embedding_std",
}
#: Arguments of a wavelength-aware backbone that name its default bands: they change no
#: weight's shape, so a backbone built with them still matches the architecture's default.
_BAND_KWARGS = {"band_ids", "sensors", "band_wavelengths", "sar_wavelengths"}
#: File names inside an export folder.
WEIGHTS_FILE, SIDECAR_FILE, CHECKPOINT_FILE = (
    "backbone.safetensors",
    "backbone.json",
    "backbone.ckpt",
)


@dataclass(frozen=True)
class BackboneSpec:
    """The architecture a backbone is built from.

    Args:
        model: timm architecture name (of the shared transformer, for a fusion model).
        in_chans: number of input bands (every modality's bands stacked).
        model_kwargs: architecture arguments; a multimodal backbone's include
            ``modalities``, ``fusion`` and the other :class:`~geodino.models.FusionViT`
            arguments.
        band_names: band names in channel order (empty when unknown).
    """

    model: str
    in_chans: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    band_names: tuple[str, ...] = ()

    @classmethod
    def from_hyper_parameters(cls, hp: Mapping[str, Any], source: str) -> "BackboneSpec":
        """The backbone of a :class:`~geodino.tasks.DINOv2Task` from its hyper-parameters.

        Args:
            hp: the task's hyper-parameters (``checkpoint["hyper_parameters"]``).
            source: the checkpoint, for messages.

        Returns:
            the spec; a fusion task's modalities and fusion arguments join ``model_kwargs``.

        Raises:
            WeightsError: if the hyper-parameters name no model or band count.
        """
        if "model" not in hp or "in_chans" not in hp:
            raise WeightsError(
                f"{source} has no geodino hyper-parameters (model, in_chans): it is not a "
                "checkpoint that `geodino fit` writes."
            )
        kwargs = dict(hp.get("model_kwargs") or {})
        if hp.get("modalities"):  # a FusionViT: its modalities and fusion are its architecture
            kwargs = {
                "modalities": dict(hp["modalities"]),
                "fusion": hp.get("fusion", "early"),
                **dict(hp.get("fusion_kwargs") or {}),
                **kwargs,
            }
        return cls(
            str(hp["model"]),
            int(hp["in_chans"]),
            kwargs,
            tuple(str(b) for b in hp.get("band_names") or ()),
        )

    @property
    def modalities(self) -> dict[str, int] | None:
        """Band count of each modality of a multimodal backbone; None for a timm ViT."""
        modalities = self.model_kwargs.get("modalities")
        return dict(modalities) if modalities else None

    def build(self, weights: "str | Path | None" = None, **overrides: Any) -> "EncoderModule":
        """Build the encoder (see :func:`~geodino.models.create_encoder`).

        Args:
            weights: initial weights file, if any.
            **overrides: more or replaced architecture arguments (e.g. ``img_size``).

        Returns:
            the encoder.
        """
        from geodino.models import create_encoder

        return create_encoder(
            self.model,
            self.in_chans,
            {**self.model_kwargs, **overrides},
            weights=weights,
            band_names=self.band_names or None,
        )


@dataclass(frozen=True)
class ExportRecord:
    """What an export's sidecar (``backbone.json``) says of its backbone.

    Args:
        model: timm architecture name.
        in_chans: number of input bands.
        model_kwargs: architecture arguments beyond timm's default build of ``model`` (size
            and regularisation arguments excluded).
        bands: band names in channel order (empty when unknown).
        statistics: per-band statistics used in pretraining (None when unknown).
        img_size: image size of the stored position grid.
        train_img_size: the image size trained at (None when unknown).
        patch_size: side of a patch in pixels.
        num_prefix_tokens: class and register tokens.
        embed_dim: width of the tokens.
        extra: provenance (``which``, ``source_checkpoint``, ``global_step``...).
        torchgeo_compatible: whether timm's default build of ``model`` takes the weights.
        geodino_version: the geodino that wrote it.
        weights: the ``backbone.safetensors`` beside the sidecar (None before writing).
    """

    model: str
    in_chans: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    bands: tuple[str, ...] = ()
    statistics: dict[str, Any] | None = None
    img_size: tuple[int, int] | None = None
    train_img_size: int | None = None
    patch_size: int | None = None
    num_prefix_tokens: int | None = None
    embed_dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    torchgeo_compatible: bool = True
    geodino_version: str | None = None
    weights: Path | None = None

    @property
    def spec(self) -> BackboneSpec:
        """The architecture to build."""
        return BackboneSpec(self.model, self.in_chans, dict(self.model_kwargs), self.bands)

    @property
    def is_multimodal(self) -> bool:
        """Whether the backbone is a multimodal FusionViT."""
        return "modalities" in self.model_kwargs

    def to_json(self) -> dict[str, Any]:
        """The sidecar's content, in the order it is written.

        Returns:
            a JSON-serialisable dict.
        """
        return {
            "model": self.model,
            "in_chans": self.in_chans,
            "model_kwargs": self.model_kwargs,
            "img_size": list(self.img_size) if self.img_size is not None else None,
            "train_img_size": self.train_img_size,
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "embed_dim": self.embed_dim,
            "bands": list(self.bands),
            "statistics": self.statistics,
            **self.extra,
            "torchgeo_compatible": self.torchgeo_compatible,
            "geodino_version": self.geodino_version,
        }

    @classmethod
    def from_json(cls, meta: Mapping[str, Any], weights: Path | None = None) -> "ExportRecord":
        """Parse a sidecar.

        Args:
            meta: the sidecar's content.
            weights: the weights file beside it.

        Returns:
            the record.

        Raises:
            KeyError, TypeError, ValueError: if required entries are missing or malformed.
        """
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "weights")}
        size = meta.get("img_size")
        train = meta.get("train_img_size")
        return cls(
            model=str(meta["model"]),
            in_chans=int(meta["in_chans"]),
            model_kwargs=dict(meta.get("model_kwargs") or {}),
            bands=tuple(str(b) for b in meta.get("bands") or ()),
            statistics=meta.get("statistics"),
            img_size=(int(size[0]), int(size[1])) if size else None,
            train_img_size=int(train) if isinstance(train, int) else None,
            patch_size=_optional_int(meta.get("patch_size")),
            num_prefix_tokens=_optional_int(meta.get("num_prefix_tokens")),
            embed_dim=_optional_int(meta.get("embed_dim")),
            extra={k: v for k, v in meta.items() if k not in known},
            torchgeo_compatible=bool(meta.get("torchgeo_compatible", True)),
            geodino_version=meta.get("geodino_version"),
            weights=weights,
        )


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float | str) else None


def read_export(source: str | Path) -> ExportRecord:
    """Read an export folder (or its ``backbone.safetensors`` / ``backbone.json``).

    Args:
        source: the folder ``geodino export`` wrote, or one of its files.

    Returns:
        the sidecar's record, with the weights file.

    Raises:
        WeightsError: if the folder lacks the weights or a valid sidecar.
    """
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    weights, sidecar = folder / WEIGHTS_FILE, folder / SIDECAR_FILE
    if not weights.is_file() or not sidecar.is_file():
        raise WeightsError(
            f"{source} is not a geodino export: the folder needs {WEIGHTS_FILE} and "
            f"{SIDECAR_FILE}; write them with `geodino export CKPT OUT_DIR` and pass the folder."
        )
    try:
        return ExportRecord.from_json(json.loads(sidecar.read_text()), weights)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise WeightsError(
            f"{sidecar} is not a valid export sidecar ({type(error).__name__}: {error}); "
            "export the backbone again with `geodino export`."
        ) from None


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


def resample_to_default(state: dict[str, Tensor], model: "EncoderModule") -> dict[str, Tensor]:
    """Resample the position embedding to ``model``'s grid and check every shape.

    Args:
        state: timm-keyed backbone weights.
        model: the encoder the weights must fit (built at its default size).

    Returns:
        the weights, shaped as ``model``'s own.

    Raises:
        WeightsError: if any other tensor disagrees in shape.
    """
    from timm.layers.pos_embed import resample_abs_pos_embed

    target = model.state_dict()
    out = dict(state)
    if "pos_embed" in out and out["pos_embed"].shape != target["pos_embed"].shape:
        arch = model.architecture()
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=list(arch.grid_size), num_prefix_tokens=arch.position_prefix
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
    spec = BackboneSpec.from_hyper_parameters(ckpt.get("hyper_parameters", {}), str(checkpoint))
    statistics = checkpoint_statistics(ckpt)
    return write_export(
        backbone_state_dict(ckpt, which),
        out_dir,
        spec.model,
        spec.in_chans,
        model_kwargs=spec.model_kwargs,
        bands=list(spec.band_names) or (statistics or {}).get("band_names"),
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
    from safetensors.torch import save_file

    model_kwargs = dict(model_kwargs or {})
    arch_kwargs = {k: v for k, v in model_kwargs.items() if k not in _SIZE_KWARGS}
    overrides = {k: v for k, v in arch_kwargs.items() if k not in _BAND_KWARGS}
    if overrides:
        log.warning(
            "%s was trained with architecture overrides %s: timm's and TorchGeo's default "
            "build of it will not match; load it with geodino (load_backbone, build_backbone "
            "or geodino.tasks).",
            model,
            overrides,
        )
    reference = BackboneSpec(model, in_chans, arch_kwargs, tuple(bands or ())).build()
    state = {k: v.contiguous() for k, v in resample_to_default(state, reference).items()}
    train_size = model_kwargs.get("img_size")
    arch = reference.architecture()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = ExportRecord(
        model=model,
        in_chans=in_chans,
        model_kwargs=arch_kwargs,
        bands=tuple(bands or ()),
        statistics=statistics,
        img_size=arch.img_size,
        train_img_size=int(train_size) if isinstance(train_size, int) else None,
        patch_size=arch.patch_size,
        num_prefix_tokens=arch.num_prefix_tokens,
        embed_dim=arch.embed_dim,
        extra=dict(extra or {}),
        torchgeo_compatible=not overrides,
        geodino_version=__version__,
    )
    meta = record.to_json()
    paths = {
        "ckpt": out / CHECKPOINT_FILE,
        "safetensors": out / WEIGHTS_FILE,
        "json": out / SIDECAR_FILE,
    }
    # TorchGeo builds timm's default architecture of the name and loads with strict=False: a
    # shallower backbone of the same width would load partly and silently keep random blocks.
    # Without `model`, TorchGeo refuses the file instead; geodino reads it either way.
    name_key = "model" if not overrides else "geodino_model"
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
        model: the encoder in eval mode: a timm ViT, or a FusionViT (multimodal and time-series
            backbones: :meth:`tokens` then takes stacked bands or, with days of year, series).
        band_names: the bands it was trained on, in channel order (empty if unknown).
        statistics: the band statistics it was trained with (None if unknown).
        source: the export folder or checkpoint it was read from.
        meta: the export sidecar (``backbone.json``) or what the checkpoint tells of it.
    """

    model: "TimmViTEncoder | FusionViT"
    band_names: list[str]
    statistics: "BandStatistics | None"
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        """Number of input bands."""
        return int(self.model.in_chans)

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        return self.model.patch_size

    @property
    def embed_dim(self) -> int:
        """Width of the tokens."""
        return int(self.model.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens before the patch tokens."""
        return int(self.model.num_prefix_tokens)

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
            from geodino.models.backbones import band_key

            if [band_key(b) for b in band_names] != [band_key(b) for b in self.band_names]:
                raise DataError(
                    f"{source} has bands {list(band_names)} but the backbone ({self.source}) "
                    f"was trained on {self.band_names}; reorder or select the data's bands "
                    "to match."
                )

    def for_bands(
        self, band_names: Sequence[str] | None, count: int, source: str
    ) -> "PretrainedBackbone":
        """This backbone ready for data with these bands.

        A fixed-band backbone is itself after :meth:`check_bands`; a wavelength-aware one
        (:class:`~geodino.models.SpectralViT`: Panopticon, DOFA) takes any subset of the
        bands it was trained on, in any order, and comes back restricted to them (shared
        weights).

        Args:
            band_names: names of the data's bands (None or empty when the data has none).
            count: number of bands of the data.
            source: the data's name, for messages.

        Returns:
            the backbone for these bands.

        Raises:
            DataError: if the data's bands do not fit.
        """
        from geodino.models import SpectralViT

        if not isinstance(self.model, SpectralViT):
            self.check_bands(band_names, count, source)
            return self
        if not band_names or len(band_names) != count:
            raise DataError(
                f"{source} does not name its {count} bands, which a wavelength-aware backbone "
                f"({self.source}) needs to pick their identities; name them (band descriptions "
                f"or band_names) among {self.band_names}."
            )
        if list(band_names) == self.band_names:
            return self
        model = self.model.select_bands(band_names)
        statistics = self.statistics.select(band_names) if self.statistics is not None else None
        return PretrainedBackbone(
            model,
            list(band_names),
            statistics,
            self.source,
            self.meta,
        )

    def normalize(self, images: Tensor) -> Tensor:
        """Fill nodata and standardise raw images with the training statistics.

        Without statistics, images are taken as already normalised (nodata becomes 0).

        Args:
            images: (B, C, H, W) raw values, or (B, T, C, H, W) time series.

        Returns:
            the backbone's input.
        """
        if self.statistics is None:
            return torch.nan_to_num(images.float())
        from geodino.transforms.normalize import Normalize

        normalize = Normalize.from_statistics(self.statistics).to(images.device)
        out: Tensor = normalize(normalize.fill_nodata(images.float()))
        return out

    @property
    def takes_series(self) -> bool:
        """Whether the backbone embeds time series (a FusionViT: it pools the dates)."""
        return self.model.modalities is not None

    @torch.no_grad()
    def tokens(self, images: Tensor, doy: Tensor | None = None) -> Tensor:
        """Normalised tokens [CLS, registers, patches] of raw images or time series.

        Args:
            images: (B, C, H, W) raw values, or (B, T, C, H, W) time series with ``doy``.
            doy: (B, T) days of year of time series (0 for a missing date).

        Returns:
            (B, 1 + R + N, D) tokens, one sequence per image or series.

        Raises:
            ConfigError: if series are given to a backbone that takes none.
        """
        inputs = self.normalize(images)
        if doy is None:
            return self.model.forward_tokens(inputs)
        from geodino.models.fusion import series_inputs

        return self.model.forward_tokens(series_inputs(inputs, doy, self.model.modalities))


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
    from geodino.transforms.normalize import BandStatistics

    path = Path(source)
    if path.is_dir() or path.suffix == ".safetensors":
        record = read_export(path)
        spec, stats = record.spec, record.statistics
        meta = record.to_json()
        weights: Path | None = record.weights
    else:
        ckpt = load_checkpoint(path)
        spec = BackboneSpec.from_hyper_parameters(ckpt.get("hyper_parameters", {}), str(path))
        stats = checkpoint_statistics(ckpt)
        if not spec.band_names and stats and stats.get("band_names"):
            spec = BackboneSpec(
                spec.model, spec.in_chans, spec.model_kwargs, tuple(stats["band_names"])
            )
        size = spec.model_kwargs.get("img_size")
        meta = {"model": spec.model, "train_img_size": size if isinstance(size, int) else None}
        weights = None
    if weights is not None and spec.modalities is not None:
        from geodino.weights_io import read_safetensors

        # a FusionViT's export is its whole state dict, not initial weights of a timm ViT
        model = spec.build()
        try:
            model.load_state_dict(read_safetensors(weights))
        except RuntimeError as error:
            raise WeightsError(
                f"{weights} does not fit the FusionViT its sidecar describes "
                f"({str(error).splitlines()[0]} ...); export the backbone again."
            ) from None
    else:
        model = spec.build(weights)
    if weights is None:
        model.load_state_dict(backbone_state_dict(ckpt, which), strict=False)
    statistics = BandStatistics(**stats) if stats else None
    return PretrainedBackbone(model.eval(), list(spec.band_names), statistics, str(source), meta)


def checkpoint_statistics(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The band statistics a ``geodino fit`` checkpoint's data module saved.

    Args:
        checkpoint: the loaded checkpoint.

    Returns:
        the statistics (``BandStatistics`` as a dict), or None if it holds none.
    """
    for value in checkpoint.values():
        if isinstance(value, Mapping) and "samples_seen" in value:
            stats = value.get("statistics")
            return dict(stats) if stats else None
    return None
