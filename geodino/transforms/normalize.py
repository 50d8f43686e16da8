"""Per-band statistics of a source and the normalisation that uses them on the device."""

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from geodino.errors import ConfigError, DataError
from geodino.seeding import numpy_rng


def nodata_mask(image: Tensor, nodata: float | None) -> Tensor:
    """Mark the pixels that hold no data.

    A pixel is invalid where any band is NaN or equals the nodata value.

    Args:
        image: (..., C, H, W) raw values.
        nodata: the value that marks nodata, or None (NaN is always nodata).

    Returns:
        bool tensor (..., H, W), True where the pixel holds no data.
    """
    invalid = torch.isnan(image)
    if nodata is not None and not math.isnan(nodata):
        invalid |= image == nodata
    return invalid.any(dim=-3)


@dataclass
class BandStatistics:
    """Statistics of each band of a source, in the units the datasets return.

    Args:
        band_names: band names, in channel order.
        mean: mean of the valid pixels of each band.
        std: standard deviation of the valid pixels of each band.
        p2: 2nd percentile of each band.
        p98: 98th percentile of each band.
        nodata: the value that marked nodata in the source (ignored in every statistic).
        pixels: number of valid pixels the statistics were computed from.
        source: free text naming what was measured (paths, config).
    """

    band_names: list[str]
    mean: list[float]
    std: list[float]
    p2: list[float] = field(default_factory=list)
    p98: list[float] = field(default_factory=list)
    nodata: float | None = None
    pixels: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        """Check that every per-band list has one value per band."""
        n = len(self.band_names)
        for key in ("mean", "std", "p2", "p98"):
            values = getattr(self, key)
            if key in ("p2", "p98") and not values:
                continue
            if len(values) != n:
                raise ConfigError(
                    f"band statistics: '{key}' has {len(values)} values for {n} bands "
                    f"{self.band_names}; recompute them with `geodino stats`."
                )
        bad = [b for b, s in zip(self.band_names, self.std, strict=True) if not s > 0]
        if bad:
            raise ConfigError(
                f"band statistics: standard deviation is zero or invalid for bands {bad}; a "
                "constant band cannot be normalised: drop it from `bands` or recompute the "
                "statistics on more chips."
            )

    @classmethod
    def load(cls, path: str | Path) -> "BandStatistics":
        """Read statistics written by :meth:`save` (YAML or JSON).

        Args:
            path: the statistics file.

        Returns:
            the statistics.

        Raises:
            DataError: if the file is missing or lacks keys.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"band statistics file {path} does not exist; write it with "
                f"`geodino stats CONFIG --out {path}`."
            )
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        missing = {"band_names", "mean", "std"} - set(data or {})
        if missing:
            raise DataError(
                f"band statistics file {path} lacks {sorted(missing)}; rewrite it with "
                "`geodino stats`."
            )
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the statistics as YAML (``.yaml``/``.yml``) or JSON (any other suffix).

        Args:
            path: destination file.

        Returns:
            the path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        if path.suffix in (".yaml", ".yml"):
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            path.write_text(json.dumps(data, indent=2))
        return path

    def select(self, band_names: Sequence[str]) -> "BandStatistics":
        """Statistics of some bands, in the given order.

        Args:
            band_names: the bands wanted.

        Returns:
            statistics restricted and reordered to ``band_names``.

        Raises:
            ConfigError: if a band has no statistics.
        """
        missing = [b for b in band_names if b not in self.band_names]
        if missing:
            raise ConfigError(
                f"band statistics ({self.source or 'file'}) have no values for bands "
                f"{missing}; they cover {self.band_names}. Recompute them for these bands "
                "with `geodino stats`."
            )
        idx = [self.band_names.index(b) for b in band_names]

        def pick(values: list[float]) -> list[float]:
            return [values[i] for i in idx] if values else []

        return BandStatistics(
            list(band_names),
            pick(self.mean),
            pick(self.std),
            pick(self.p2),
            pick(self.p98),
            self.nodata,
            self.pixels,
            self.source,
        )


class StatisticsAccumulator:
    """Streaming per-band statistics over batches of chips, ignoring nodata.

    Means and variances are exact (float64 sums); percentiles come from a uniform sample of
    at most ``max_samples`` valid pixels per band drawn from every chip.

    Args:
        band_names: names of the bands, in channel order.
        nodata: the nodata value of the source (NaN is always ignored).
        max_samples: pixels kept per band for the percentiles.
        seed: seed of the pixel subsampling.
    """

    def __init__(
        self,
        band_names: Sequence[str],
        nodata: float | None = None,
        max_samples: int = 2_000_000,
        seed: int = 0,
    ) -> None:
        """Start empty."""
        self.band_names = list(band_names)
        self.nodata = nodata
        self.max_samples = max_samples
        n = len(self.band_names)
        self._sum = np.zeros(n)
        self._sumsq = np.zeros(n)
        self._count = 0
        self._samples: list[np.ndarray] = []
        self._kept = 0
        self._rng = numpy_rng(seed)
        self._per_chip = 4096

    def update(self, images: Tensor) -> None:
        """Add a batch of chips.

        Args:
            images: (B, C, H, W) or (C, H, W) raw values.

        Raises:
            DataError: if the band count differs from ``band_names``.
        """
        if images.ndim == 3:
            images = images[None]
        if images.shape[1] != len(self.band_names):
            raise DataError(
                f"statistics: chips have {images.shape[1]} bands but {len(self.band_names)} "
                f"band names were given ({self.band_names})."
            )
        valid = ~nodata_mask(images, self.nodata)
        x = images.permute(0, 2, 3, 1)[valid].double().numpy()
        if not len(x):
            return
        self._sum += x.sum(0)
        self._sumsq += (x * x).sum(0)
        self._count += len(x)
        if self._kept < self.max_samples:
            take = min(len(x), self._per_chip * images.shape[0], self.max_samples - self._kept)
            rows = self._rng.choice(len(x), size=take, replace=False)
            self._samples.append(x[rows].astype(np.float32))
            self._kept += take

    def compute(self, source: str = "") -> BandStatistics:
        """The statistics of everything added so far.

        Args:
            source: text naming what was measured.

        Returns:
            the band statistics.

        Raises:
            DataError: if no valid pixel was seen.
        """
        if self._count == 0:
            raise DataError(
                f"statistics of {source or 'the source'}: every pixel seen was nodata "
                f"(nodata={self.nodata}); check the nodata value and that the chips lie "
                "inside the data."
            )
        mean = self._sum / self._count
        var = np.maximum(self._sumsq / self._count - mean**2, 0.0)
        samples = np.concatenate(self._samples)
        p2, p98 = np.percentile(samples, [2, 98], axis=0)
        return BandStatistics(
            band_names=self.band_names,
            mean=[float(v) for v in mean],
            std=[float(v) for v in np.sqrt(var)],
            p2=[float(v) for v in p2],
            p98=[float(v) for v in p98],
            nodata=None if self.nodata is None else float(self.nodata),
            pixels=int(self._count),
            source=source,
        )


def compute_band_statistics(
    batches: Iterable[Tensor],
    band_names: Sequence[str],
    nodata: float | None = None,
    source: str = "",
) -> BandStatistics:
    """Per-band statistics of a stream of chips.

    Args:
        batches: (B, C, H, W) or (C, H, W) tensors of raw values.
        band_names: names of the bands, in channel order.
        nodata: the nodata value (NaN is always ignored).
        source: text naming what was measured.

    Returns:
        the band statistics.
    """
    acc = StatisticsAccumulator(band_names, nodata)
    for batch in batches:
        acc.update(batch)
    return acc.compute(source)


class Normalize(nn.Module):
    """Per-band standardisation, with nodata pixels set to the band mean (0 after it).

    Args:
        mean: mean of each band.
        std: standard deviation of each band.
        nodata: the nodata value of the source (NaN is always treated as nodata).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], nodata: float | None = None
    ) -> None:
        """Hold the statistics as buffers so they follow the module's device."""
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.nodata = nodata

    @classmethod
    def from_statistics(cls, stats: BandStatistics) -> "Normalize":
        """Build from :class:`BandStatistics`.

        Args:
            stats: the band statistics.

        Returns:
            the normalisation.
        """
        return cls(stats.mean, stats.std, stats.nodata)

    def fill_nodata(self, image: Tensor) -> Tensor:
        """Replace nodata pixels by the band mean, in raw units.

        Args:
            image: (B, C, H, W) raw values.

        Returns:
            the image with every band of a nodata pixel set to that band's mean.
        """
        invalid = nodata_mask(image, self.nodata).unsqueeze(-3)
        return torch.where(invalid, self.mean.to(image.dtype), image)

    def forward(self, image: Tensor) -> Tensor:
        """Standardise each band.

        Args:
            image: (B, C, H, W) raw values without nodata.

        Returns:
            (image - mean) / std per band.
        """
        if image.shape[-3] != self.mean.shape[0]:
            raise ConfigError(
                f"normalisation has statistics for {self.mean.shape[0]} bands but the image "
                f"has {image.shape[-3]}; recompute the statistics for the selected bands."
            )
        return (image - self.mean) / self.std
