"""Figures: training curves and image chips rendered from chosen bands."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor


def _pyplot():  # noqa: ANN202 - matplotlib is imported lazily and headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict[str, float]], out: str | Path) -> Path:
    """Plot every recorded metric against the step, one panel each.

    Args:
        history: rows of ``{"step": s, metric: value, ...}``.
        out: PNG to write.

    Returns:
        the PNG path.
    """
    plt = _pyplot()
    keys = sorted({k for row in history for k in row if k != "step"})
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in history if key in r]
        steps, values = zip(*points, strict=True) if points else ((), ())
        ax.plot(steps, values, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def to_rgb(image: Tensor, bands: Sequence[int], low: Sequence[float] | None = None,
           high: Sequence[float] | None = None) -> np.ndarray:
    """Stretch three bands of a (C, H, W) chip to an (H, W, 3) image in [0, 1].

    Args:
        image: the chip.
        bands: channel indices shown as red, green and blue.
        low: value shown black per chosen band (default: its 2nd percentile).
        high: value shown white per chosen band (default: its 98th percentile).

    Returns:
        the RGB array.
    """
    rgb = image[list(bands)].float().numpy()
    lo = np.asarray(low if low is not None else np.nanpercentile(rgb, 2, axis=(1, 2)))
    hi = np.asarray(high if high is not None else np.nanpercentile(rgb, 98, axis=(1, 2)))
    rgb = (rgb - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    return np.nan_to_num(np.clip(rgb, 0, 1)).transpose(1, 2, 0)


def plot_chips(images: Tensor, bands: Sequence[int], out: str | Path,
               titles: Sequence[str] | None = None, columns: int = 8) -> Path:
    """Plot a grid of chips as RGB composites.

    Args:
        images: (N, C, H, W) chips.
        bands: channel indices shown as red, green and blue.
        out: PNG to write.
        titles: optional title per chip.
        columns: chips per row.

    Returns:
        the PNG path.
    """
    plt = _pyplot()
    n = len(images)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_rgb(images[i], bands))
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
