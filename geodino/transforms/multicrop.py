"""Batched, band-kind-aware DINOv2 multi-crop on the device.

Every random choice of a batch (crop boxes, flips, rotations, photometric factors, which crops
are blurred or speckled) is drawn at once on the CPU from the caller's ``torch.Generator``, so
the same generator state gives bit-identical crops on a given device. The crops are then
rendered in chunks small enough to stay in the CPU cache: anti-aliased random resized crops
(on the CPU one ``interpolate`` per crop, as torchvision's ``RandomResizedCrop``; on
accelerators one batched ``roi_align``, or a supersampled ``grid_sample`` for bicubic), then
photometric operations chosen by band kind: brightness/contrast jitter and Gaussian blur for
optical bands, Gamma speckle and dB offsets for SAR bands; flips and quarter turns happen in
the copy to the output. Nothing assumes RGB except the colour operations of the
``dinov2_rgb`` preset.

The official DINOv2 code writes blur probabilities 1.0 / 0.1 / 0.5 (global 1, global 2,
local) but its ``GaussianBlur(p)`` wraps ``RandomApply`` with ``1 - p``, so it applies them
with probabilities 0.0 / 0.9 / 0.5. Here ``blur_p`` is the probability actually applied; the
``dinov2_rgb`` preset uses 0.0 / 0.9 / 0.5 to reproduce the official behaviour.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from kornia.enhance import adjust_hue
from torch import Tensor, nn
from torchvision.ops import roi_align

from geodino.errors import ConfigError, DataError
from geodino.seeding import torch_generator

BAND_KINDS = ("optical", "sar")
INTERPOLATIONS = ("bilinear", "bicubic")

#: Presets: keyword arguments of MultiCrop.
PRESETS: dict[str, dict[str, Any]] = {
    "optical": {},
    "sar": {"brightness": 0.0, "contrast": 0.0, "per_band_jitter": 0.0, "blur_p": (0.0, 0.0, 0.0)},
    "s1s2": {},
    "dinov2_rgb": {
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "solarize_p": 0.2,
        "blur_p": (0.0, 0.9, 0.5),
        "rotate90": False,
        "per_band_jitter": 0.0,
        "max_value": 255.0,
        "interpolation": "bicubic",
    },
}

#: Band kind assumed for every band when a preset is used without ``band_kinds``.
_PRESET_KIND = {"optical": "optical", "sar": "sar", "dinov2_rgb": "optical"}

#: The official recipe blurs with torchvision's GaussianBlur(kernel_size=9).
_BLUR_RADIUS = 4

#: Render with the accelerator's batched resampling even on the CPU (tests of that path).
_FORCE_BATCHED = False

#: Largest supersampling factor per axis of the bicubic path (anti-aliasing of strong zooms out).
_MAX_SUPERSAMPLE = 8

#: Elements per rendering chunk. On the CPU a chunk that stays in cache makes the ~20 passes of
#: jitter, speckle and blur several times faster than passes over the whole batch; on an
#: accelerator the chunk only bounds the memory of the temporaries.
_CPU_CHUNK = 2**20
_DEVICE_CHUNK = 2**26

#: ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)

#: Colour operations of ColorJitter, applied in a random order per crop as torchvision does.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


@dataclass
class _Plan:
    """Random choices for a group of crops, view-major (one row per crop)."""

    image: Tensor  # (N,) source image index
    view: Tensor  # (N,) view index: 0 and 1 global, 2... local
    box: Tensor  # (N, 4) top, left, height, width in whole pixels (float64)
    flip: Tensor  # (N,) horizontal flip before turning
    turns: Tensor  # (N,) counter-clockwise quarter turns
    jitter: Tensor  # (N,) colour jitter applied
    brightness: Tensor  # (N,) brightness factor
    gain: Tensor  # (N, C) brightness factor of each band (per-band jitter included)
    contrast: Tensor  # (N,) contrast factor
    saturation: Tensor  # (N,) saturation factor (RGB)
    hue: Tensor  # (N,) hue shift in turns (RGB)
    order: Tensor  # (N, 4) order of the colour operations (RGB)
    gray: Tensor  # (N,) converted to grayscale (RGB)
    shift: Tensor  # (N,) SAR dB offset, 0 where not applied
    speckle: Tensor  # (N,) SAR speckle applied
    blur: Tensor  # (N,) Gaussian blur applied
    sigma: Tensor  # (N,) blur sigma in pixels
    solarize: Tensor  # (N,) solarised (RGB, second global crop)

    def to(self, device: torch.device) -> "_Plan":
        """The same choices with every tensor on ``device``."""
        return _Plan(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


#: The uniform numbers of one crop, in the column order of the single ``torch.rand`` call that
#: draws them (changing the order changes every crop of a seed): name and width. After them
#: come one column per band, the per-band brightness gain.
_DRAW_COLUMNS: tuple[tuple[str, int], ...] = (
    ("crop_area", 10),  # RandomResizedCrop's 10 attempts: area fraction
    ("crop_ratio", 10),  # ... and log aspect ratio
    ("crop_top", 1),
    ("crop_left", 1),
    ("flip", 1),
    ("turns", 1),
    ("jitter", 1),
    ("brightness", 1),
    ("contrast", 1),
    ("saturation", 1),
    ("hue", 1),
    ("order", 4),  # of the four colour operations
    ("gray", 1),
    ("db_jitter", 1),  # whether the SAR dB offset applies
    ("db_shift", 1),
    ("speckle", 1),
    ("blur", 1),
    ("sigma", 1),
    ("solarize", 1),
)


@dataclass(frozen=True)
class _Draws:
    """The uniform numbers in [0, 1) behind a group of crops, by what they decide.

    One float64 ``torch.rand(n, 40 + channels)`` call draws them all, the columns split as
    :data:`_DRAW_COLUMNS` says; a column of width 1 is a vector (N,), wider ones (N, width).
    """

    crop_area: Tensor
    crop_ratio: Tensor
    crop_top: Tensor
    crop_left: Tensor
    flip: Tensor
    turns: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    gray: Tensor
    db_jitter: Tensor
    db_shift: Tensor
    speckle: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor
    band_gain: Tensor  # (N, C)

    @classmethod
    def draw(cls, n: int, channels: int, generator: torch.Generator | None) -> "_Draws":
        """Draw the numbers of ``n`` crops of ``channels`` bands.

        Args:
            n: crops.
            channels: bands.
            generator: the source of the numbers.

        Returns:
            the numbers, by name.
        """
        width = sum(w for _, w in _DRAW_COLUMNS)
        u = torch.rand(n, width + channels, generator=generator, dtype=torch.float64)
        columns: dict[str, Tensor] = {}
        start = 0
        for name, w in _DRAW_COLUMNS:
            columns[name] = u[:, start] if w == 1 else u[:, start : start + w]
            start += w
        return cls(**columns, band_gain=u[:, start:])


@dataclass(frozen=True)
class MultiCropRecipe:
    """What :class:`MultiCrop` draws and applies: sizes, scales, probabilities and ranges.

    The fields are :class:`MultiCrop`'s arguments (documented there, the keys of
    ``data.multicrop`` in configs), plus ``default_kind``, the kind of every band when
    ``band_kinds`` is None (the ``sar`` preset sets ``sar``). Values are checked on creation;
    scales, probabilities and ranges are stored as floats and sequences as tuples.

    Raises:
        ConfigError: if a size, scale, probability, range or band kind is out of its domain.
    """

    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    band_kinds: Sequence[str] | None = None
    flip_p: float = 0.5
    rotate90: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    jitter_p: float = 0.8
    per_band_jitter: float = 0.0
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    speckle_looks: float | None = 4.0
    speckle_p: float = 0.5
    db_shift: float = 1.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    solarize_p: float = 0.0
    max_value: float = 1.0
    interpolation: str = "bilinear"
    default_kind: str = "optical"

    def __post_init__(self) -> None:
        """Check every value and normalise sequences to tuples of floats."""
        for name, size in (
            ("global_crops_size", self.global_crops_size),
            ("local_crops_size", self.local_crops_size),
        ):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(
                    f"{name}={size!r}: crop sizes are whole pixels >= 1; set a "
                    "positive integer such as 224 (global) or 98 (local)."
                )
        if (
            isinstance(self.local_crops_number, bool)
            or not isinstance(self.local_crops_number, int)
            or self.local_crops_number < 0
        ):
            raise ConfigError(
                f"local_crops_number={self.local_crops_number!r}: set a whole number "
                ">= 0 (0 turns local crops off)."
            )
        for name, scale in (
            ("global_crops_scale", self.global_crops_scale),
            ("local_crops_scale", self.local_crops_scale),
        ):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ConfigError(
                    f"{name}={tuple(scale)}: give (min, max) area fractions with "
                    "0 < min <= max <= 1, e.g. (0.32, 1.0)."
                )
        if self.band_kinds is not None:
            if isinstance(self.band_kinds, str):
                raise ConfigError(
                    f"band_kinds={self.band_kinds!r}: give a list with one kind per band,"
                    f" e.g. [{self.band_kinds!r}, {self.band_kinds!r}]."
                )
            unknown = sorted(set(self.band_kinds) - set(BAND_KINDS))
            if unknown:
                raise ConfigError(
                    f"band_kinds {unknown} unknown; use {list(BAND_KINDS)} for each band."
                )
        if len(self.blur_p) != 3:
            raise ConfigError(
                f"blur_p={tuple(self.blur_p)}: give 3 probabilities (global 1, global 2,"
                " local), e.g. (1.0, 0.1, 0.5)."
            )
        probabilities = {
            "flip_p": self.flip_p,
            "jitter_p": self.jitter_p,
            "speckle_p": self.speckle_p,
            "grayscale_p": self.grayscale_p,
            "solarize_p": self.solarize_p,
            **{f"blur_p[{i}]": p for i, p in enumerate(self.blur_p)},
        }
        for name, p in probabilities.items():
            if not 0 <= p <= 1:
                raise ConfigError(f"{name}={p} is not a probability; set a value in [0, 1].")
        ranges = {
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "db_shift": self.db_shift,
        }
        for name, value in ranges.items():
            if value < 0:
                raise ConfigError(f"{name}={value} is negative; set a range >= 0 (0 turns it off).")
        if not 0 <= self.per_band_jitter < 1:
            raise ConfigError(
                f"per_band_jitter={self.per_band_jitter}: set a value in [0, 1) such as 0.05."
            )
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(
                f"hue={self.hue}: set a self.hue jitter in [0, 0.5] (fraction of the colour "
                "circle), e.g. 0.1."
            )
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(
                f"blur_sigma={tuple(self.blur_sigma)}: give (min, max) sigmas in pixels "
                "with 0 < min <= max, e.g. (0.1, 2.0)."
            )
        if self.speckle_looks is not None and not self.speckle_looks > 0:
            raise ConfigError(
                f"speckle_looks={self.speckle_looks}: set a number of looks > 0 (e.g. 4)"
                " or null to turn speckle off."
            )
        if not self.max_value > 0:
            raise ConfigError(
                f"max_value={self.max_value}: set the value of full intensity (> 0), "
                "e.g. 255 for 8-bit images or 1.0."
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={self.interpolation!r} unknown; use one of {list(INTERPOLATIONS)}."
            )
        if self.default_kind not in BAND_KINDS:
            raise ConfigError(
                f"default_kind={self.default_kind!r} unknown; use one of {list(BAND_KINDS)}."
            )
        # frozen: normalise through object.__setattr__, as dataclasses document
        normalised: dict[str, tuple[float, ...] | tuple[str, ...] | float] = {
            "global_crops_scale": _pair(self.global_crops_scale),
            "local_crops_scale": _pair(self.local_crops_scale),
            "blur_p": (float(self.blur_p[0]), float(self.blur_p[1]), float(self.blur_p[2])),
            "blur_sigma": _pair(self.blur_sigma),
            "max_value": float(self.max_value),
        }
        if self.band_kinds is not None:
            normalised["band_kinds"] = tuple(self.band_kinds)
        for name, normal in normalised.items():
            object.__setattr__(self, name, normal)

    @property
    def rgb(self) -> bool:
        """Whether the RGB-only colour operations are on."""
        return bool(self.saturation or self.hue or self.grayscale_p or self.solarize_p)


def _pair(values: Sequence[float]) -> tuple[float, float]:
    return (float(values[0]), float(values[1]))


class MultiCrop(nn.Module):
    """Two global and N local crops per image, with band-kind-aware augmentations.

    Optical bands get brightness/contrast jitter and Gaussian blur, SAR bands (in dB) Gamma
    speckle and a calibration offset; crop geometry is shared by all bands of a sample. When any
    RGB-only operation is on (``saturation``, ``hue``, ``grayscale_p``, ``solarize_p``), the
    images must have 3 optical bands in ``[0, max_value]`` and the colour jitter follows
    torchvision's ``ColorJitter`` (operations in random order, contrast towards the grey mean,
    values clamped), as the official DINOv2 recipe.

    Args:
        global_crops_size: side of the global crops.
        local_crops_size: side of the local crops.
        local_crops_number: local crops per image (0 allowed).
        global_crops_scale: range of the global crops' area, as a fraction of the image.
        local_crops_scale: range of the local crops' area.
        band_kinds: ``optical`` or ``sar`` per channel (None: all optical; all SAR with the
            ``sar`` preset).
        flip_p: probability of a horizontal flip (vertical flips arise with rotations).
        rotate90: rotate each crop by a random multiple of 90 degrees (no up in overhead images).
        brightness: multiplicative brightness range (1 +- brightness) of optical bands.
        contrast: contrast range (1 +- contrast) around each crop's band means.
        jitter_p: probability of the brightness/contrast (and SAR dB offset) jitter.
        per_band_jitter: extra per-band brightness range (1 +- value) of optical bands.
        blur_p: blur probabilities actually applied to (global 1, global 2, local) crops.
        blur_sigma: range of the Gaussian blur sigma, in pixels (at most 9 taps, as the
            official kernel, cut at 3 sigma).
        speckle_looks: looks of the multiplicative Gamma speckle on SAR bands (None: off).
        speckle_p: probability of speckle per crop.
        db_shift: range of the additive dB offset on SAR bands.
        saturation: saturation jitter (RGB preset only).
        hue: hue jitter, a fraction of the colour circle (RGB preset only).
        grayscale_p: probability of grayscale (RGB preset only).
        solarize_p: probability of solarisation of the second global crop (RGB preset only).
        max_value: value of full intensity for the RGB-only operations.
        interpolation: ``bilinear`` or ``bicubic`` (PIL's, as the official recipe) resizing,
            anti-aliased when a crop shrinks.

    Raises:
        ConfigError: if a size, scale, probability, range or band kind is out of its domain.
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        local_crops_number: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        band_kinds: Sequence[str] | None = None,
        flip_p: float = 0.5,
        rotate90: bool = True,
        brightness: float = 0.0,
        contrast: float = 0.0,
        jitter_p: float = 0.8,
        per_band_jitter: float = 0.0,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        speckle_looks: float | None = 4.0,
        speckle_p: float = 0.5,
        db_shift: float = 1.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        grayscale_p: float = 0.0,
        solarize_p: float = 0.0,
        max_value: float = 1.0,
        interpolation: str = "bilinear",
    ) -> None:
        """Check and store the recipe."""
        super().__init__()
        self.recipe = MultiCropRecipe(
            global_crops_size=global_crops_size,
            local_crops_size=local_crops_size,
            local_crops_number=local_crops_number,
            global_crops_scale=global_crops_scale,
            local_crops_scale=local_crops_scale,
            band_kinds=band_kinds,
            flip_p=flip_p,
            rotate90=rotate90,
            brightness=brightness,
            contrast=contrast,
            jitter_p=jitter_p,
            per_band_jitter=per_band_jitter,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            speckle_looks=speckle_looks,
            speckle_p=speckle_p,
            db_shift=db_shift,
            saturation=saturation,
            hue=hue,
            grayscale_p=grayscale_p,
            solarize_p=solarize_p,
            max_value=max_value,
            interpolation=interpolation,
        )

    @classmethod
    def from_recipe(cls, recipe: MultiCropRecipe) -> "MultiCrop":
        """The multi-crop of a recipe.

        Args:
            recipe: the checked recipe.

        Returns:
            the multi-crop.
        """
        crop = cls.__new__(cls)
        nn.Module.__init__(crop)
        crop.recipe = recipe
        return crop

    # read by the data modules and the task (sizes must divide by the patch size)
    @property
    def global_crops_size(self) -> int:
        """Side of the global crops."""
        return self.recipe.global_crops_size

    @property
    def local_crops_size(self) -> int:
        """Side of the local crops."""
        return self.recipe.local_crops_size

    @property
    def local_crops_number(self) -> int:
        """Local crops per image."""
        return self.recipe.local_crops_number

    @property
    def band_kinds(self) -> list[str] | None:
        """``optical`` or ``sar`` per channel (None: every band of ``default_kind``)."""
        kinds = self.recipe.band_kinds
        return None if kinds is None else list(kinds)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MultiCrop":
        """A named recipe, optionally with some arguments changed.

        - ``optical``: the defaults, for multispectral reflectances (no colour operations).
        - ``sar``: bands in dB, all SAR unless ``band_kinds`` says otherwise; speckle and dB
          offsets, no optical jitter or blur.
        - ``s1s2``: mixed SAR and optical bands; needs ``band_kinds`` (the data module passes
          them), each band gets the operations of its kind.
        - ``dinov2_rgb``: the official DINOv2 recipe for 3-band images with values in
          ``[0, max_value]`` (255: 8-bit images as the folder sources deliver them; pass
          ``max_value=1.0`` for [0, 1] images): bicubic random resized crops, horizontal flips
          only, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, solarisation p 0.2
          on the second global crop, and blur with the probabilities the official code
          *applies*: 0.0 / 0.9 / 0.5. Its config writes 1.0 / 0.1 / 0.5, but its
          ``GaussianBlur(p)`` wraps ``RandomApply`` with ``1 - p``; here ``blur_p`` is always
          the probability applied.

        Args:
            name: ``optical``, ``sar``, ``s1s2`` or ``dinov2_rgb``.
            **overrides: arguments replacing the preset's.

        Returns:
            the multi-crop.

        Raises:
            ConfigError: for an unknown preset, ``s1s2`` without ``band_kinds``, or a bad
                override.
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown multi-crop preset {name!r}; choose from {sorted(PRESETS)}.")
        if name == "s1s2" and overrides.get("band_kinds") is None:
            raise ConfigError(
                "multi-crop preset 's1s2' needs band_kinds, one 'sar' or 'optical' "
                "per band (e.g. ['sar', 'sar', 'optical', ...]); the data module "
                "passes them from its datasets."
            )
        arguments = {**PRESETS[name], **overrides}
        default_kind = _PRESET_KIND.get(name, "optical")
        return cls.from_recipe(MultiCropRecipe(**arguments, default_kind=default_kind))

    @property
    def rgb(self) -> bool:
        """Whether the RGB-only colour operations are on."""
        return self.recipe.rgb

    def extra_repr(self) -> str:
        """Sizes and counts, for printed models."""
        return (
            f"global={self.recipe.global_crops_size}x2, local={self.recipe.local_crops_size}"
            f"x{self.recipe.local_crops_number}, interpolation={self.recipe.interpolation}"
        )

    # --- random choices ----------------------------------------------------------------
    def _kinds(self, channels: int) -> list[str]:
        kinds = list(self.recipe.band_kinds or [self.recipe.default_kind] * channels)
        if len(kinds) != channels:
            raise ConfigError(
                f"band_kinds lists {len(kinds)} bands but the images have {channels}; give one "
                "kind ('optical' or 'sar') per band, in channel order."
            )
        if self.rgb and (channels != 3 or "sar" in kinds):
            raise ConfigError(
                f"saturation, hue, grayscale and solarisation need 3 optical (RGB) bands, the "
                f"images have {channels} ({kinds}); use the 'optical' preset for multispectral "
                "data or set saturation, hue, grayscale_p and solarize_p to 0."
            )
        return kinds

    def _plan(
        self,
        views: Sequence[int],
        height: int,
        width: int,
        batch: int,
        channels: int,
        scale: tuple[float, float],
        generator: torch.Generator | None,
    ) -> _Plan:
        """Draw every choice of ``len(views) * batch`` crops, view-major, in a fixed order."""
        n = len(views) * batch
        u = _Draws.draw(n, channels, generator)
        view = torch.tensor(list(views), dtype=torch.long).repeat_interleave(batch)
        image = torch.arange(batch).repeat(len(views))

        # RandomResizedCrop as torchvision draws it: whole-pixel boxes, 10 attempts, then a
        # centre crop of the image clipped to the ratio range
        area = height * width * (scale[0] + (scale[1] - scale[0]) * u.crop_area)
        low, high = math.log(3 / 4), math.log(4 / 3)
        ratio = torch.exp(low + (high - low) * u.crop_ratio)
        w = (area * ratio).sqrt().round()
        h = (area / ratio).sqrt().round()
        fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        fw, fh = float(width), float(height)
        if width / height < 3 / 4:
            fh = float(round(width / (3 / 4)))
        elif width / height > 4 / 3:
            fw = float(round(height * (4 / 3)))
        found = fits.any(1)
        w = torch.where(found, w, fw)
        h = torch.where(found, h, fh)
        top = torch.where(
            found,
            (u.crop_top * (height - h + 1)).floor().minimum(height - h),
            ((height - h) / 2).floor(),
        )
        left = torch.where(
            found,
            (u.crop_left * (width - w + 1)).floor().minimum(width - w),
            ((width - w) / 2).floor(),
        )
        box = torch.stack([top, left, h, w], 1)

        flip = u.flip < self.recipe.flip_p
        turns = (u.turns * 4).long().clamp(max=3)
        if not self.recipe.rotate90:
            turns = torch.zeros_like(turns)

        jitter = u.jitter < self.recipe.jitter_p
        b_low = max(0.0, 1 - self.recipe.brightness)
        brightness = b_low + (1 + self.recipe.brightness - b_low) * u.brightness
        gain = brightness[:, None] * (1 + self.recipe.per_band_jitter * (2 * u.band_gain - 1))
        c_low = max(0.0, 1 - self.recipe.contrast)
        contrast = c_low + (1 + self.recipe.contrast - c_low) * u.contrast
        s_low = max(0.0, 1 - self.recipe.saturation)
        saturation = s_low + (1 + self.recipe.saturation - s_low) * u.saturation
        hue = self.recipe.hue * (2 * u.hue - 1)
        order = u.order.argsort(1)
        gray = u.gray < self.recipe.grayscale_p

        shift = torch.where(
            u.db_jitter < self.recipe.jitter_p, self.recipe.db_shift * (2 * u.db_shift - 1), 0.0
        )
        speckle = (u.speckle < self.recipe.speckle_p) & (self.recipe.speckle_looks is not None)

        blur_p = torch.tensor(self.recipe.blur_p, dtype=torch.float64)[view.clamp(max=2)]
        blur = u.blur < blur_p
        sigma = (
            self.recipe.blur_sigma[0]
            + (self.recipe.blur_sigma[1] - self.recipe.blur_sigma[0]) * u.sigma
        )
        solarize = (u.solarize < self.recipe.solarize_p) & (view == 1)
        return _Plan(
            image=image,
            view=view,
            box=box,
            flip=flip,
            turns=turns,
            jitter=jitter,
            brightness=brightness,
            gain=gain,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            order=order,
            gray=gray,
            shift=shift,
            speckle=speckle,
            blur=blur,
            sigma=sigma,
            solarize=solarize,
        )

    # --- geometry ----------------------------------------------------------------------
    @staticmethod
    def _place(out: Tensor, rows: slice, x: Tensor, flip: Tensor, turns: Tensor) -> None:
        """Write crops into ``out[rows]``, each flipped then turned (``flip``, ``turns`` on CPU).

        The photometric operations commute with flips and quarter turns (speckle is i.i.d. per
        pixel), so these happen here, in the copy into the output, not as extra passes.
        """
        target = out[rows]
        codes = flip.long() * 4 + turns
        unique = torch.unique(codes).tolist()
        for code in unique:
            if len(unique) == 1:
                source, index = x, None
            else:
                index = (codes == code).nonzero().flatten().to(x.device)
                source = x[index]
            if code >= 4:
                source = source.flip(-1)
            source = torch.rot90(source, code % 4, (-2, -1))
            if index is None:
                target.copy_(source)
            else:
                target[index] = source

    @staticmethod
    def _theta(plan: _Plan, height: int, width: int) -> Tensor:
        """``affine_grid`` matrices mapping each output crop onto its box, flip and turns in."""
        top, left, h, w = plan.box.unbind(1)
        n = len(top)
        scale = torch.zeros(n, 2, 2, dtype=torch.float64)
        scale[:, 0, 0], scale[:, 1, 1] = w / width, h / height
        # output (u, v) of the turned crop reads the unturned crop at D (u, v)
        quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        turn = torch.stack([torch.linalg.matrix_power(quarter, k) for k in range(4)])[plan.turns]
        mirror = torch.ones(n, 2, dtype=torch.float64)
        mirror[plan.flip, 0] = -1
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, :, :2] = scale @ (mirror[:, :, None] * turn)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 2] = (2 * top + h) / height - 1
        return theta

    def _resample(self, images: Tensor, plan: _Plan, size: int) -> tuple[Tensor, bool]:
        """Crops of ``plan`` (CPU) resized to ``size`` with anti-aliasing.

        Returns:
            the crops and whether they are already flipped and turned.
        """
        if not _batched(images.device):
            # One anti-aliased interpolate per crop (torchvision's RandomResizedCrop on tensors)
            # costs half a batched roi_align on the CPU and filters like PIL.
            crops = []
            boxes = plan.box.long().tolist()
            for i, (t, left, h, w) in zip(plan.image.tolist(), boxes, strict=True):
                crop = images[i : i + 1, :, t : t + h, left : left + w].contiguous()
                # bilinear anti-aliasing only changes shrinking crops (it is bilinear when
                # enlarging) and costs 2.4x; bicubic's anti-aliased kernel is PIL's (a = -0.5)
                antialias = self.recipe.interpolation == "bicubic" or h > size or w > size
                crops.append(
                    F.interpolate(
                        crop,
                        size=(size, size),
                        mode=self.recipe.interpolation,
                        antialias=antialias,
                        align_corners=False,
                    )
                )
            return torch.cat(crops), False
        top, left, h, w = plan.box.unbind(1)
        if self.recipe.interpolation == "bilinear":
            rois = torch.stack([plan.image.double(), left, top, left + w, top + h], 1)
            # aligned=True puts pixel centres at +0.5 as interpolate(align_corners=False), and
            # sampling_ratio=0 averages ceil(box / size) samples per axis: a box filter against
            # aliasing when a crop shrinks.
            x = roi_align(
                images,
                rois.to(images.device, images.dtype),
                (size, size),
                spatial_scale=1.0,
                sampling_ratio=0,
                aligned=True,
            )
            return x, False
        height, width = images.shape[-2:]
        theta = self._theta(plan, height, width).to(images.device, images.dtype)
        extent_u = torch.where(plan.turns % 2 == 0, w, h) / size
        extent_v = torch.where(plan.turns % 2 == 0, h, w) / size
        k_u = (extent_u - 1e-9).ceil().long().clamp(1, _MAX_SUPERSAMPLE)
        k_v = (extent_v - 1e-9).ceil().long().clamp(1, _MAX_SUPERSAMPLE)
        x = images.new_empty(len(plan.image), images.shape[1], size, size)
        groups = k_u * (_MAX_SUPERSAMPLE + 1) + k_v
        for group in torch.unique(groups).tolist():
            rows = (groups == group).nonzero().flatten()
            ku, kv = divmod(group, _MAX_SUPERSAMPLE + 1)
            source = images.index_select(0, plan.image[rows].to(images.device))
            grid = F.affine_grid(
                theta[rows.to(images.device)],
                [len(rows), images.shape[1], size * kv, size * ku],
                align_corners=False,
            )
            part = F.grid_sample(
                source, grid, mode="bicubic", padding_mode="border", align_corners=False
            )
            if ku > 1 or kv > 1:
                part = F.avg_pool2d(part, (kv, ku))
            x[rows.to(images.device)] = part
        return x, True

    # --- photometry --------------------------------------------------------------------
    def _spectral_jitter(
        self, x: Tensor, plan: _Plan, device_plan: _Plan, optical: Tensor, sar: Tensor
    ) -> Tensor:
        """Optical brightness/contrast and the SAR dB offset as one multiply-add."""
        optical_on = (
            bool(optical.any())
            and bool(plan.jitter.any())
            and bool(self.recipe.brightness or self.recipe.contrast or self.recipe.per_band_jitter)
        )
        sar_on = bool(sar.any()) and bool((plan.shift != 0).any())
        if not (optical_on or sar_on):
            return x
        ones = torch.ones_like(device_plan.gain, dtype=x.dtype)
        zeros = torch.zeros_like(ones)
        b = zeros
        a = ones
        if optical_on:
            on = device_plan.jitter[:, None] & optical[None, :].to(x.device)
            gain = device_plan.gain.to(x.dtype)
            contrast = device_plan.contrast.to(x.dtype)[:, None]
            # gain (mean + contrast (x - mean)) == a x + b
            a = torch.where(on, gain * contrast, ones)
            if self.recipe.contrast:
                mean = x.mean((-2, -1))
                b = torch.where(on, gain * (1 - contrast) * mean, zeros)
        if sar_on:
            b = b + sar[None, :].to(x.device) * device_plan.shift.to(x.dtype)[:, None]
        return torch.addcmul(b[..., None, None], x, a[..., None, None])

    def _rgb_jitter(self, x: Tensor, plan: _Plan, device_plan: _Plan) -> Tensor:
        """Torchvision's ColorJitter and RandomGrayscale on RGB crops in [0, max_value]."""
        top = self.recipe.max_value
        x = x.clamp(0, top)
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        factors = {
            _BRIGHTNESS: (self.recipe.brightness, device_plan.brightness),
            _CONTRAST: (self.recipe.contrast, device_plan.contrast),
            _SATURATION: (self.recipe.saturation, device_plan.saturation),
            _HUE: (self.recipe.hue, device_plan.hue),
        }
        for step in range(4):
            for op, (strength, factor) in factors.items():
                rows = (plan.jitter & (plan.order[:, step] == op)).nonzero().flatten()
                if not strength or not len(rows):
                    continue
                d_rows = rows.to(x.device)
                part = x[d_rows]
                f = factor[d_rows].to(x.dtype).view(-1, 1, 1, 1)
                if op == _BRIGHTNESS:
                    part = part * f
                elif op == _CONTRAST:
                    mean = (part * luma).sum(1, keepdim=True).mean((-2, -1), keepdim=True)
                    part = f * part + (1 - f) * mean
                elif op == _SATURATION:
                    part = f * part + (1 - f) * (part * luma).sum(1, keepdim=True)
                else:
                    part = adjust_hue(part / top, f.flatten() * 2 * math.pi) * top
                x[d_rows] = part.clamp(0, top)
        rows = plan.gray.nonzero().flatten()
        if len(rows):
            d_rows = rows.to(x.device)
            x[d_rows] = (x[d_rows] * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        return x

    def _speckle(
        self, x: Tensor, plan: _Plan, sar_bands: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Add 10 log10 of Gamma(L, 1/L) speckle to the SAR bands of the chosen crops."""
        rows = plan.speckle.nonzero().flatten()
        if not len(rows) or not len(sar_bands) or self.recipe.speckle_looks is None:
            return x
        looks = float(self.recipe.speckle_looks)
        index = (rows.to(x.device)[:, None], sar_bands.to(x.device)[None, :])
        shape = (len(rows), len(sar_bands), *x.shape[-2:])
        gamma = _standard_gamma(math.prod(shape), looks, generator, x.device).view(shape)
        x[index] = x[index] + 10 * torch.log10(gamma.to(x.dtype) / looks)
        return x

    def _blur(self, x: Tensor, plan: _Plan, optical_bands: Tensor) -> Tensor:
        """Gaussian blur of the optical bands of the chosen crops, each with its own sigma."""
        rows = plan.blur.nonzero().flatten()
        if not len(rows) or not len(optical_bands) or x.shape[-1] < 2:
            return x
        sigma = plan.sigma[rows, None]
        # Taps beyond 3 sigma weigh < 1.2e-4 of the centre: dropping them (zero weights)
        # spares up to 6 of the official 9 taps without depending on which crops share a chunk.
        reach = (3 * sigma).ceil().clamp(1, _BLUR_RADIUS)
        radius = min(int(reach.max()), x.shape[-1] - 1)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * (taps[None, :] / sigma) ** 2) * (taps.abs() <= reach)
        weights = (weights / weights.sum(1, keepdim=True)).to(x.device, x.dtype)
        all_rows, all_bands = len(rows) == len(x), len(optical_bands) == x.shape[1]
        d_rows, d_bands = rows.to(x.device), optical_bands.to(x.device)
        if all_rows and all_bands:
            return _separable_blur(x, weights)
        index = (d_rows, slice(None)) if all_bands else (d_rows[:, None], d_bands[None, :])
        x[index] = _separable_blur(x[index], weights)
        return x

    def _solarize(self, x: Tensor, plan: _Plan) -> Tensor:
        """Invert the bright pixels of the chosen crops (RGB, second global crop)."""
        rows = plan.solarize.nonzero().flatten()
        if not len(rows):
            return x
        d_rows = rows.to(x.device)
        part = x[d_rows]
        # torchvision inverts pixels >= 128 of 8-bit images
        x[d_rows] = torch.where(
            part >= self.recipe.max_value * 128 / 255, self.recipe.max_value - part, part
        )
        return x

    def _render(
        self,
        images: Tensor,
        plan: _Plan,
        size: int,
        kinds: list[str],
        noise: torch.Generator | None,
    ) -> Tensor:
        """All crops of a plan, rendered chunk by chunk."""
        n, channels = len(plan.image), images.shape[1]
        out = images.new_empty(n, channels, size, size)
        if n == 0:
            return out
        optical = torch.tensor([k == "optical" for k in kinds])
        sar = ~optical
        optical_bands, sar_bands = optical.nonzero().flatten(), sar.nonzero().flatten()
        device_plan = plan.to(images.device)
        budget = _CPU_CHUNK if images.device.type == "cpu" else _DEVICE_CHUNK
        supersampled = self.recipe.interpolation == "bicubic" and _batched(images.device)
        for rows in _chunks(plan, channels, size, budget, supersampled):
            part, device_part = _select(plan, rows), _select(device_plan, rows)
            x, oriented = self._resample(images, part, size)
            if self.rgb:
                x = self._rgb_jitter(x, part, device_part)
            else:
                x = self._spectral_jitter(x, part, device_part, optical, sar)
            if noise is not None:
                x = self._speckle(x, part, sar_bands, noise)
            x = self._blur(x, part, optical_bands)
            if self.rgb:
                # float rounding of the blur may step a hair outside [0, max_value]
                x = self._solarize(x, part).clamp_(0, self.recipe.max_value)
            if oriented:
                out[rows] = x
            else:
                self._place(out, rows, x, part.flip, part.turns)
        return out

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Crops of a batch, view-major as DINOv2 stacks them.

        A batch of time series (B, T, C, H, W) is cropped as one image of T x C bands: each
        crop keeps its geometry (box, flip, turns) on every date, and its photometric draws
        (brightness, contrast, blur, dB offset) apply to every date alike, so the crops keep
        the series' trajectory (the signal a series carries) while the per-band jitter and
        the speckle, which real acquisitions also vary, are drawn per date and band.

        Args:
            images: (B, C, H, W) images, or (B, T, C, H, W) time series, in physical units
                (reflectance, dB), nodata already filled; converted to float32.
            generator: CPU source of every random choice (same state -> identical crops);
                None uses torch's default generator.

        Returns:
            ``global_crops`` (2B, C, G, G) and ``local_crops`` (N*B, C, l, l): first view 0 of
            every image, then view 1, and so on; (2B, T, C, G, G) and (N*B, T, C, l, l) for
            time series.

        Raises:
            DataError: if ``images`` is not a 4-D or 5-D batch.
            ConfigError: if ``band_kinds`` does not match the channels, the RGB operations
                meet non-RGB images or time series, or the generator is not a CPU generator.
        """
        if images.ndim not in (4, 5) or min(images.shape[-2:]) < 1:
            raise DataError(
                f"multi-crop needs images of shape (B, C, H, W) or time series of shape "
                f"(B, T, C, H, W), got {tuple(images.shape)}; batch the chips before cropping."
            )
        if images.ndim == 5:
            return self._series(images, generator)
        if generator is not None and generator.device.type != "cpu":
            raise ConfigError(
                f"multi-crop draws its choices on the CPU but got a generator on "
                f"{generator.device}; pass torch.Generator() (CPU)."
            )
        if images.dtype != torch.float32:
            images = images.float()
        batch, channels, height, width = images.shape
        kinds = self._kinds(channels)
        global_plan = self._plan(
            (0, 1), height, width, batch, channels, self.recipe.global_crops_scale, generator
        )
        local_plan = self._plan(
            range(2, 2 + self.recipe.local_crops_number),
            height,
            width,
            batch,
            channels,
            self.recipe.local_crops_scale,
            generator,
        )
        noise = None
        if self.recipe.speckle_looks is not None and "sar" in kinds:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            noise = torch_generator(seed, images.device)
        return {
            "global_crops": self._render(
                images, global_plan, self.recipe.global_crops_size, kinds, noise
            ),
            "local_crops": self._render(
                images, local_plan, self.recipe.local_crops_size, kinds, noise
            ),
        }

    def _series(self, images: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Crops of (B, T, C, H, W) time series: the dates folded into the bands and back."""
        batch, steps, channels, height, width = images.shape
        if self.rgb:
            raise ConfigError(
                "the RGB colour operations (saturation, hue, grayscale_p, solarize_p) take "
                f"3-band images, not time series of shape {tuple(images.shape)}; use the "
                "'optical' preset for series."
            )
        kinds = self._kinds(channels)
        folded = MultiCrop.from_recipe(replace(self.recipe, band_kinds=tuple(kinds) * steps))
        crops = folded(images.reshape(batch, steps * channels, height, width), generator)
        return {k: v.unflatten(1, (steps, channels)) for k, v in crops.items()}


def _select(plan: _Plan, rows: slice) -> _Plan:
    return _Plan(**{f.name: getattr(plan, f.name)[rows] for f in fields(plan)})


def _batched(device: torch.device) -> bool:
    """Whether crops are resampled in batches (accelerators) rather than one by one (CPU)."""
    return device.type != "cpu" or _FORCE_BATCHED


def _chunks(
    plan: _Plan, channels: int, size: int, budget: int, supersampled: bool
) -> Iterator[slice]:
    """Consecutive crops whose rendering fits ``budget`` elements (at least one crop each)."""
    n = len(plan.image)
    elements = channels * size * size
    if supersampled:
        # the supersampled grid of a crop that shrinks holds up to k^2 times its pixels
        scale = plan.box[:, 2:].amax(1) / size
        cost = elements * scale.ceil().clamp(1, _MAX_SUPERSAMPLE).pow(2)
    else:
        cost = torch.full((n,), float(elements), dtype=torch.float64)
    start, used = 0, 0.0
    for i, c in enumerate(cost.tolist()):
        if i > start and used + c > budget:
            yield slice(start, i)
            start, used = i, 0.0
        used += c
    yield slice(start, n)


def _separable_blur(x: Tensor, weights: Tensor) -> Tensor:
    """Blur (N, C, H, W) with one symmetric 1-D kernel per crop along both axes (reflect).

    Shifted multiply-adds with per-crop weights let every crop keep its own sigma in one pass
    and, on a chunk that fits the cache, run faster than depthwise convolutions.
    """
    taps = weights.shape[1]
    radius = taps // 2
    w = weights.view(len(weights), 1, 1, 1, taps)
    height, width = x.shape[-2:]
    # centre tap first: zero outer taps then add exact zeros whatever the chunk's radius
    order = [radius, *range(radius), *range(radius + 1, taps)]
    padded = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = padded[..., radius : radius + width] * w[..., radius]
    for k in order[1:]:
        out.addcmul_(padded[..., k : k + width], w[..., k])
    padded = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = padded[..., radius : radius + height, :] * w[..., radius]
    for k in order[1:]:
        out.addcmul_(padded[..., k : k + height, :], w[..., k])
    return out


def _standard_gamma(
    n: int, shape: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """``n`` draws of Gamma(shape, 1) from ``generator`` (Marsaglia and Tsang, 2000).

    ``torch.distributions.Gamma`` cannot take a generator, which exact resumes need.
    """
    alpha = shape + 1 if shape < 1 else shape
    d = alpha - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while len(todo):
        z = torch.randn(len(todo), generator=generator, device=device)
        u = torch.rand(len(todo), generator=generator, device=device)
        v = (1 + c * z) ** 3
        accept = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.clamp_min(1e-30).log())
        out[todo[accept]] = d * v[accept]
        todo = todo[~accept]
    if shape < 1:
        out = out * torch.rand(n, generator=generator, device=device) ** (1 / shape)
    return out
