"""Band identities and band masks of a batch, for wavelength-aware backbones.

A mixed-sensor data module (:class:`~geodino.datamodules.MixedGeoDataModule`) delivers
``band_ids`` (C,) with each batch and, in training, a band mask per crop
(``global_band_mask``, ``local_band_mask``, and ``teacher_band_mask`` where the teacher's
global crops hide other bands than the student's); the task hands them to a
:class:`~geodino.models.SpectralEncoder` with the crops they belong to.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from geodino.errors import ConfigError
from geodino.models import Encoder, SpectralEncoder


@dataclass(frozen=True)
class SpectralBatch:
    """The band identities of a batch and the band mask of each group of crops.

    Args:
        band_ids: (C,) identities of the batch's bands.
        band_masks: per group of crops, keyed by (crops, side), (crops, C) bool masks.
        teacher_band_mask: (crops, C) mask of the teacher's global crops; None: the
            student's.
        source: index of the batch's source in a mixed-sensor data module; None when the
            batch does not say.
    """

    band_ids: Tensor
    band_masks: dict[tuple[int, int], Tensor]
    teacher_band_mask: Tensor | None = field(default=None)
    source: int | None = field(default=None)

    @classmethod
    def from_batch(cls, batch: Mapping[str, object]) -> "SpectralBatch | None":
        """The spectral part of a batch, None for a batch without band identities.

        Args:
            batch: a training or validation batch.

        Returns:
            the record, or None.
        """
        ids = batch.get("band_ids")
        if not isinstance(ids, Tensor):
            return None
        masks = {}
        for kind in ("global", "local"):
            crops, mask = batch.get(f"{kind}_crops"), batch.get(f"{kind}_band_mask")
            if isinstance(crops, Tensor) and crops.ndim == 4 and isinstance(mask, Tensor):
                masks[(crops.shape[0], crops.shape[-1])] = mask
        teacher = batch.get("teacher_band_mask")
        source = batch.get("source")
        return cls(
            ids,
            masks,
            teacher if isinstance(teacher, Tensor) else None,
            source if isinstance(source, int) else None,
        )

    def band_mask(
        self, crops: Tensor, which: Literal["student", "teacher"] = "student"
    ) -> Tensor | None:
        """The band mask of a group of crops (None: every band visible).

        Args:
            crops: (B_i, C, H, W) crops of the batch.
            which: the branch that embeds them (the teacher takes only global crops).

        Returns:
            their (B_i, C) mask.
        """
        if which == "teacher" and self.teacher_band_mask is not None:
            return self.teacher_band_mask
        return self.band_masks.get((crops.shape[0], crops.shape[-1]))


def spectral(encoder: Encoder) -> SpectralEncoder:
    """The encoder as a wavelength-aware one.

    Args:
        encoder: the backbone.

    Returns:
        it, as a :class:`~geodino.models.SpectralEncoder`.

    Raises:
        ConfigError: if it takes no band identities.
    """
    if not isinstance(encoder, SpectralEncoder):
        raise ConfigError(
            f"the data deliver bands of several sensors with their identities, but the "
            f"backbone ({type(encoder).__name__}) has a fixed band set; use a wavelength-aware "
            "one (model: panopticon_vitb14 or dofa_base_patch16_224, sizes in model_kwargs)."
        )
    return encoder


__all__ = ["SpectralBatch", "spectral"]
