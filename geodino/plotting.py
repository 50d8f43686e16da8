"""Figures: training curves, chips, PCA feature maps and attention maps.

Chips are rendered from chosen bands; attention maps are those of the class token and the
registers.
"""

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from timm.layers.attention import Attention
    from timm.models import VisionTransformer


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str | Path, dpi: int = 110, title: str = "") -> Path:
    """Title, lay out, write and close a figure.

    Args:
        fig: the matplotlib figure.
        out: PNG to write.
        dpi: resolution.
        title: figure title (none if empty).

    Returns:
        the PNG path.
    """
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=dpi)
    _pyplot().close(fig)
    return out


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
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    return save_figure(fig, out)


def to_rgb(
    image: Tensor,
    bands: Sequence[int],
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> np.ndarray:
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
    stretched: np.ndarray = np.nan_to_num(np.clip(rgb, 0, 1)).transpose(1, 2, 0)
    return stretched


def plot_chips(
    images: Tensor,
    bands: Sequence[int],
    out: str | Path,
    titles: Sequence[str] | None = None,
    columns: int = 8,
) -> Path:
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
    return save_figure(fig, out)


def pca_rgb(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """The first three principal components of an embedding grid as colours.

    Each component is stretched from its 2nd to its 98th percentile; cells without an
    embedding (NaN) come out white.

    Args:
        embeddings: (D, H, W) embeddings (D >= 3), NaN where there is none.
        seed: seed of the PCA subsample on large grids.

    Returns:
        (H, W, 3) float array in [0, 1].
    """
    from geodino.pca import fit_pca, project

    d, h, w = embeddings.shape
    flat = embeddings.reshape(d, -1).T
    valid = np.isfinite(flat).all(1)
    rgb = np.ones((h * w, 3))
    if valid.sum() >= 2:
        mean, components = fit_pca(flat[valid], min(3, d), seed)
        scores = project(flat[valid], mean, components).astype(np.float64)
        lo, hi = np.percentile(scores, 2, axis=0), np.percentile(scores, 98, axis=0)
        scores = np.clip((scores - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
        rgb[valid, : scores.shape[1]] = scores
    return rgb.reshape(h, w, 3)


@torch.no_grad()
def attention_maps(model: "VisionTransformer", images: Tensor) -> Tensor:
    """Attention of the class token and each register over the patches, in the last block.

    Args:
        model: a timm ViT.
        images: (B, C, H, W) normalised images (sides multiples of the patch size).

    Returns:
        (B, 1 + R, H / patch, W / patch) attention weights averaged over heads; each map
        sums to at most 1 (the rest goes to the prefix tokens).
    """
    from geodino.models import forward_tokens, patch_size

    attn = cast("Attention", model.blocks[-1].attn)
    captured: dict[str, Tensor] = {}
    hook = attn.register_forward_pre_hook(lambda _, args: captured.update(x=args[0]))
    try:
        forward_tokens(model, images)  # the encoder's own embedding (a Panopticon's too)
    finally:
        hook.remove()
    x = captured["x"]
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)
    prefix = model.num_prefix_tokens
    p = patch_size(model)
    grid = (images.shape[-2] // p, images.shape[-1] // p)
    maps: Tensor = weights[:, :prefix, prefix:].reshape(b, prefix, *grid)
    return maps


def rgb_bands(band_names: Sequence[str]) -> list[int] | None:
    """Indices of red, green and blue among band names (Sentinel-2 or plain names).

    Args:
        band_names: the bands.

    Returns:
        three indices, or None if the bands hold no RGB.
    """
    from geodino.models.backbones import _band_key

    keys = [_band_key(b) for b in band_names]
    wanted = [_band_key(b) for b in ("red", "green", "blue")]
    return [keys.index(w) for w in wanted] if all(w in keys for w in wanted) else None


def plot_feature_maps(backbone: Any, image: Tensor, out: str | Path, title: str = "") -> Path:
    """One chip, its PCA feature map and its attention maps, side by side.

    The chip is shown as RGB (or its first band); the attention maps are those of the class
    token and every register.

    Args:
        backbone: a :class:`~geodino.export.PretrainedBackbone`.
        image: (C, H, W) raw chip with the backbone's bands (sides multiples of the patch).
        out: PNG to write.
        title: figure title.

    Returns:
        the PNG path.
    """
    from geodino.models import forward_tokens, split_tokens

    plt = _pyplot()
    x = backbone.normalize(image[None])
    with torch.no_grad():
        tokens = forward_tokens(backbone.model, x)
    patches = split_tokens(backbone.model, tokens)[2][0]
    p = backbone.patch_size
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    pca = pca_rgb(patches.T.reshape(-1, *grid).numpy())
    maps = attention_maps(backbone.model, x)[0].numpy()
    names = ["CLS"] + [f"register {i + 1}" for i in range(len(maps) - 1)]
    panels = 2 + len(maps)
    fig, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.5), squeeze=False)
    bands = rgb_bands(backbone.band_names) if backbone.band_names else None
    shown = torch.nan_to_num(image, nan=0.0)
    axes[0, 0].imshow(to_rgb(shown, bands) if bands else to_rgb(shown, [0, 0, 0]))
    axes[0, 0].set_title("RGB" if bands else "band 1", fontsize=8)
    axes[0, 1].imshow(pca, interpolation="nearest")
    axes[0, 1].set_title("patch PCA (1-3)", fontsize=8)
    for ax, name, weights in zip(axes[0, 2:], names, maps, strict=True):
        ax.imshow(weights, cmap="inferno", interpolation="nearest")
        ax.set_title(f"attention {name}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, out, title=title)


def plot_pca_map(
    embeddings: np.ndarray, out: str | Path, title: str = "", image: np.ndarray | None = None
) -> Path:
    """A raster's patch embeddings as a PCA colour map, beside its RGB if given.

    Args:
        embeddings: (D, H, W) embedding grid (NaN where none).
        out: PNG to write.
        title: figure title.
        image: (H', W', 3) RGB rendering of the same footprint, shown on the left.

    Returns:
        the PNG path.
    """
    plt = _pyplot()
    panels = 1 if image is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.8), squeeze=False)
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("RGB", fontsize=9)
    axes[0, -1].imshow(pca_rgb(embeddings), interpolation="nearest")
    axes[0, -1].set_title("patch embeddings, PCA 1-3 as RGB", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, out, dpi=100, title=title)
