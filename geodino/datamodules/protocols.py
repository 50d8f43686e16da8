"""What the pretraining task and callbacks may read from a data module.

:class:`~geodino.datamodules.DINODataModule` implements it; a user's own Lightning data
module takes part by defining these members (checked structurally, no subclassing).
"""

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from geodino.transforms.multicrop import MultiCrop
    from geodino.transforms.normalize import BandStatistics


@runtime_checkable
class PretrainingData(Protocol):
    """A data module delivering multi-cropped, normalised batches of named bands."""

    #: samples per batch on each device
    batch_size: int
    #: the multi-crop applied on the device (None before set-up)
    multicrop: "MultiCrop | None"
    #: the band statistics used to normalise (None before set-up)
    statistics: "BandStatistics | None"

    @property
    def band_names(self) -> list[str]:
        """Names of the bands delivered, in channel order."""
        ...

    @property
    def num_bands(self) -> int:
        """Number of bands delivered."""
        ...

    @property
    def band_groups(self) -> dict[str, int] | None:
        """Band count of each modality, in channel order (None: one modality)."""
        ...
