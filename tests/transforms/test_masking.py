"""iBOT block masks: DINOv2's collate statistics, block shapes, determinism, refusals."""

import pytest
import torch

from geodino.errors import ConfigError
from geodino.transforms import MaskingGenerator, sample_ibot_masks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def boxes(mask: torch.Tensor) -> tuple[int, int]:
    """Height and width of the bounding box of a (H, W) mask."""
    rows, cols = mask.nonzero(as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_masks_follow_dinov2_collate() -> None:
    n_tokens = 16 * 16
    masks = sample_ibot_masks(64, (16, 16), 0.5, (0.1, 0.5), generator=gen())
    assert masks.shape == (64, n_tokens) and masks.dtype == torch.bool
    ratios = masks.float().mean(1)
    masked = ratios > 0
    assert int(masked.sum()) == 32  # int(64 * 0.5) images, the rest unmasked
    # each masked image's ratio comes from its own bin of linspace(0.1, 0.5, 33); a mask may
    # fall a patch short when no block fits, never over
    assert ratios.max() <= 0.5
    bins = torch.linspace(0.1, 0.5, 33)
    spread = ratios[masked].sort().values
    assert (spread >= bins[:-1] - 2 / n_tokens).all() and (spread <= bins[1:]).all()
    # masked images are shuffled among the others
    assert 0 < int(masked[:32].sum()) < 32


@pytest.mark.parametrize(
    ("n_images", "probability", "expected"), [(10, 0.5, 5), (7, 0.3, 2), (8, 0.0, 0), (8, 1.0, 8)]
)
def test_fraction_of_masked_images(n_images: int, probability: float, expected: int) -> None:
    for seed in range(5):
        masks = sample_ibot_masks(n_images, (14, 14), probability, generator=gen(seed))
        assert int(masks.any(1).sum()) == expected


def test_ratios_across_batches_stay_in_range() -> None:
    for grid, low, high in (((16, 16), 0.1, 0.5), ((8, 12), 0.2, 0.3)):
        n_tokens = grid[0] * grid[1]
        ratios = torch.cat(
            [
                sample_ibot_masks(32, grid, 0.5, (low, high), generator=gen(s)).float().mean(1)
                for s in range(10)
            ]
        )
        ratios = ratios[ratios > 0]
        assert len(ratios) == 160
        assert ratios.max() <= high and ratios.min() >= low - 2 / n_tokens
        assert abs(float(ratios.mean()) - (low + high) / 2) < 0.02


def test_blocks_respect_aspect_limits() -> None:
    square = MaskingGenerator(20, min_num_patches=9, min_aspect=1.0)
    tall = MaskingGenerator((20, 20), min_aspect=2.0, max_aspect=4.0)
    default = MaskingGenerator((20, 20))
    shapes: dict[str, list[tuple[int, int]]] = {"square": [], "tall": [], "default": []}
    for seed in range(200):
        for name, masker, count in (
            ("square", square, 9),
            ("tall", tall, 12),
            ("default", default, 12),
        ):
            mask = masker(count, gen(seed))
            assert 0 < int(mask.sum()) <= count
            h, w = boxes(mask)
            if h * w == int(mask.sum()):  # the mask is one rectangle
                shapes[name].append((h, w))
    # aspect 1: h = w = round(sqrt(area)), so one 3 x 3 block (other aspects give 2 x 4, ...)
    assert shapes["square"] == [(3, 3)] * 200
    assert all(h > w for h, w in shapes["tall"])
    aspects = torch.tensor([h / w for h, w in shapes["default"]])
    assert aspects.min() >= 0.3 / 1.5 and aspects.max() <= 1.5 / 0.3  # rounding of small blocks
    assert (aspects > 1).any() and (aspects < 1).any()
    # blocks aim at min_num_patches patches or more; rounding the sides may lose one (2 x 4)
    big = MaskingGenerator(20, min_num_patches=9)
    assert {int(big(9, gen(s)).sum()) for s in range(50)} == {8, 9}


def test_deterministic_for_a_generator() -> None:
    a = sample_ibot_masks(64, (16, 16), generator=gen(3))
    assert torch.equal(a, sample_ibot_masks(64, (16, 16), generator=gen(3)))
    assert not torch.equal(a, sample_ibot_masks(64, (16, 16), generator=gen(4)))
    masker = MaskingGenerator((16, 16))
    assert torch.equal(masker(60, gen(1)), masker(60, gen(1)))
    state = torch.get_rng_state()
    sample_ibot_masks(16, (16, 16), generator=gen())
    masker(50, gen())
    assert torch.equal(state, torch.get_rng_state())  # python/torch global RNGs untouched


def test_small_and_empty_batches() -> None:
    assert sample_ibot_masks(0, (16, 16), generator=gen()).shape == (0, 256)
    masks = sample_ibot_masks(4, (4, 4), generator=gen())  # the demo's 56 px crops at patch 14
    assert masks.shape == (4, 16) and int(masks.sum(1).max()) <= 8
    assert not MaskingGenerator(16)(0, gen()).any()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"mask_probability=1\.5"):
        sample_ibot_masks(8, (16, 16), mask_probability=1.5)
    with pytest.raises(ConfigError, match="mask_ratio"):
        sample_ibot_masks(8, (16, 16), mask_ratio=(0.6, 0.2))
    with pytest.raises(ConfigError, match="empty"):
        sample_ibot_masks(8, (0, 16))
    with pytest.raises(ConfigError, match="aspect"):
        MaskingGenerator(16, min_aspect=0.0)
    with pytest.raises(ConfigError, match="aspect"):
        MaskingGenerator(16, min_aspect=2.0, max_aspect=1.0)
