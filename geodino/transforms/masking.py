"""iBOT block masking as in DINOv2, drawn from a ``torch.Generator`` for exact resumes."""

import math

import numpy as np
import torch
from torch import Tensor


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """Integer in [low, high] inclusive, like ``random.randint``."""
    return int(torch.randint(low, high + 1, (), generator=generator))


class MaskingGenerator:
    """Masks of rectangular blocks covering a requested number of patches (BEiT/DINOv2).

    Args:
        input_size: patch grid ``(H, W)`` or its side.
        max_num_patches: largest block, in patches (DINOv2: half the grid).
        min_num_patches: smallest block, in patches.
        min_aspect: smallest block aspect ratio (the largest is its inverse by default).
        max_aspect: largest block aspect ratio.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: int | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        """Store the grid and block limits."""
        self.height, self.width = (
            (input_size, input_size) if isinstance(input_size, int) else input_size
        )
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = (
            0.5 * self.num_patches if max_num_patches is None else max_num_patches
        )
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask: np.ndarray, max_mask_patches: float, generator: torch.Generator | None) -> int:
        delta = 0
        for _ in range(10):
            target_area = _uniform(generator, self.min_num_patches, max_mask_patches)
            aspect = math.exp(_uniform(generator, *self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < self.width and h < self.height:
                top = _randint(generator, 0, self.height - h)
                left = _randint(generator, 0, self.width - w)
                block = mask[top : top + h, left : left + w]
                num_masked = int(block.sum())
                if 0 < h * w - num_masked <= max_mask_patches:
                    delta += h * w - num_masked
                    block[:] = True
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int = 0, generator: torch.Generator | None = None) -> Tensor:
        """A mask with about ``num_masking_patches`` patches set.

        Args:
            num_masking_patches: patches to mask.
            generator: source of randomness.

        Returns:
            (H, W) bool mask.
        """
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            delta = self._mask(mask, budget, generator)
            if delta == 0:
                break
            count += delta
        return torch.from_numpy(mask)


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
    the order is shuffled.

    Args:
        n_images: number of global crops.
        grid: patch grid ``(H, W)``.
        mask_probability: fraction of images masked.
        mask_ratio: range of the masked fraction of patches.
        generator: source of randomness.

    Returns:
        (n_images, H * W) bool masks.
    """
    n_tokens = grid[0] * grid[1]
    masker = MaskingGenerator(grid, max_num_patches=int(0.5 * n_tokens))
    n_masked = int(n_images * mask_probability)
    probs = torch.linspace(mask_ratio[0], mask_ratio[1], n_masked + 1).tolist()
    masks = [
        masker(int(n_tokens * _uniform(generator, probs[i], probs[i + 1])), generator)
        for i in range(n_masked)
    ]
    masks += [torch.zeros(grid, dtype=torch.bool) for _ in range(n_images - n_masked)]
    order = torch.randperm(n_images, generator=generator).tolist()
    return torch.stack([masks[i] for i in order]).flatten(1)
