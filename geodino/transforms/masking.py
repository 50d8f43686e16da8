"""iBOT block masking as in DINOv2, drawn from a ``torch.Generator`` for exact resumes.

The algorithm is DINOv2's ``MaskingGenerator`` and the mask part of its ``collate_data_and_cast``;
only the source of randomness differs: every draw comes from the caller's generator (python's
``random`` in the official code), so a resumed run draws the same masks.
"""

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from geodino.errors import ConfigError


class _Uniforms:
    """Uniform numbers in [0, 1) from a generator, fetched in blocks to spare per-draw calls."""

    def __init__(self, generator: torch.Generator | None, block: int = 1024) -> None:
        self.generator = generator
        self.block = block
        self._values: Iterator[float] = iter(())

    def next(self) -> float:
        """The next uniform number."""
        value = next(self._values, None)
        if value is None:
            draws = torch.rand(self.block, generator=self.generator, dtype=torch.float64)
            self._values = iter(draws.tolist())
            value = next(self._values)
        return value

    def uniform(self, low: float, high: float) -> float:
        """A number between ``low`` and ``high``, like ``random.uniform``."""
        return low + (high - low) * self.next()

    def randint(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``, both included, like ``random.randint``."""
        return low + min(int(self.next() * (high - low + 1)), high - low)


class MaskingGenerator:
    """Masks of rectangular blocks covering a requested number of patches (BEiT/DINOv2).

    Blocks of at least ``min_num_patches`` patches and aspect ratio (height / width) between
    ``min_aspect`` and ``max_aspect`` are added until the requested count is reached or ten
    tries in a row add nothing; a mask never exceeds the requested count.

    Args:
        input_size: patch grid ``(H, W)`` or its side.
        max_num_patches: largest block, in patches (None: half the grid, as DINOv2 trains).
        min_num_patches: smallest block, in patches.
        min_aspect: smallest block aspect ratio.
        max_aspect: largest block aspect ratio (None: ``1 / min_aspect``).

    Raises:
        ConfigError: for an empty grid, a non-positive block size or aspect ratio.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: int | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        """Check and store the grid and block limits."""
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        if height < 1 or width < 1:
            raise ConfigError(
                f"mask grid {input_size} is empty; give the patch grid of the global "
                "crops, crop size // patch size per side (e.g. 16 for 224 / 14)."
            )
        if min_num_patches < 1 or (max_num_patches is not None and max_num_patches < 1):
            raise ConfigError(
                f"mask blocks need min_num_patches >= 1 and max_num_patches >= 1, "
                f"got {min_num_patches} and {max_num_patches}."
            )
        if min_aspect > 0:
            max_aspect = max_aspect or 1 / min_aspect
        if not min_aspect > 0 or max_aspect is None or not max_aspect >= min_aspect:
            raise ConfigError(
                f"mask block aspect ratios need 0 < min_aspect <= max_aspect, got "
                f"{min_aspect} and {max_aspect}; DINOv2 uses 0.3 and 1 / 0.3."
            )
        self.height, self.width = int(height), int(width)
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = (
            0.5 * self.num_patches if max_num_patches is None else max_num_patches
        )
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        """Grid and block limits."""
        return (
            f"MaskingGenerator({self.height}x{self.width}, blocks {self.min_num_patches}-"
            f"{self.max_num_patches} patches, log aspect {self.log_aspect_ratio})"
        )

    def _add_block(self, mask: np.ndarray, max_mask_patches: float, draws: _Uniforms) -> int:
        delta = 0
        for _ in range(10):
            target_area = draws.uniform(self.min_num_patches, max_mask_patches)
            aspect = math.exp(draws.uniform(*self.log_aspect_ratio))
            h = round(math.sqrt(target_area * aspect))
            w = round(math.sqrt(target_area / aspect))
            if w < self.width and h < self.height:
                top = draws.randint(0, self.height - h)
                left = draws.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_mask_patches:
                    block[:] = True
                    delta += new
                if delta > 0:
                    break
        return delta

    def _generate(self, num_masking_patches: int, draws: _Uniforms) -> Tensor:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            delta = self._add_block(mask, budget, draws)
            if delta == 0:
                break
            count += delta
        return torch.from_numpy(mask)

    def __call__(
        self, num_masking_patches: int = 0, generator: torch.Generator | None = None
    ) -> Tensor:
        """A mask with at most ``num_masking_patches`` patches set (usually exactly that many).

        Args:
            num_masking_patches: patches to mask.
            generator: source of every random draw (None: torch's default generator).

        Returns:
            (H, W) bool mask.
        """
        return self._generate(num_masking_patches, _Uniforms(generator))


def sample_ibot_masks(
    n_images: int,
    grid: tuple[int, int],
    mask_probability: float = 0.5,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masks for a batch of global crops, as DINOv2's collate draws them.

    ``int(n_images * mask_probability)`` images get masks whose ratios are spread over
    ``linspace(min, max, n + 1)`` bins (uniform within each bin); the others get none; then
    the order is shuffled. Blocks follow :class:`MaskingGenerator` with at most half the grid
    per block, as DINOv2 trains.

    Args:
        n_images: number of global crops.
        grid: patch grid ``(H, W)``.
        mask_probability: fraction of images masked.
        mask_ratio: range of the masked fraction of patches.
        generator: source of every random draw (None: torch's default generator).

    Returns:
        (n_images, H * W) bool masks.

    Raises:
        ConfigError: for a negative count, a probability or ratio outside [0, 1], or an empty
            grid.
    """
    if n_images < 0:
        raise ConfigError(f"n_images={n_images}: the number of global crops cannot be negative.")
    if not 0 <= mask_probability <= 1:
        raise ConfigError(
            f"mask_probability={mask_probability} is not a probability; set a value "
            "in [0, 1] (DINOv2: 0.5)."
        )
    if len(mask_ratio) != 2 or not 0 <= mask_ratio[0] <= mask_ratio[1] <= 1:
        raise ConfigError(
            f"mask_ratio={tuple(mask_ratio)}: give (min, max) fractions with "
            "0 <= min <= max <= 1 (DINOv2: (0.1, 0.5))."
        )
    n_tokens = grid[0] * grid[1]
    masker = MaskingGenerator((grid[0], grid[1]), max_num_patches=int(0.5 * n_tokens) or 1)
    draws = _Uniforms(generator)
    n_masked = int(n_images * mask_probability)
    bins = torch.linspace(mask_ratio[0], mask_ratio[1], n_masked + 1, dtype=torch.float64)
    bounds: list[float] = bins.tolist()
    masks = [
        masker._generate(int(n_tokens * draws.uniform(bounds[i], bounds[i + 1])), draws)
        for i in range(n_masked)
    ]
    masks += [torch.zeros(masker.height, masker.width, dtype=torch.bool)] * (n_images - n_masked)
    order = torch.randperm(n_images, generator=generator).tolist()
    if not masks:
        return torch.zeros(0, n_tokens, dtype=torch.bool)
    return torch.stack([masks[i] for i in order]).flatten(1)
