"""The one way geodino derives random generators from seeds.

Every random draw in the library comes from a generator built here from explicit integer
keys (a run seed, then an epoch, step, rank, sample index, ...), so that two processes that
agree on the keys draw the same numbers and a resumed run draws what the uninterrupted run
would have. Library code never seeds or draws from the global torch or NumPy generators.
"""

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key, through NumPy's ``SeedSequence``.

    Args:
        *keys: non-negative integers, most significant first (e.g. seed, step, rank).

    Returns:
        the derived seed.
    """
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def numpy_rng(*keys: int) -> np.random.Generator:
    """A NumPy generator seeded with all ``keys`` (the same stream as ``default_rng(list(keys))``).

    Args:
        *keys: non-negative integers, most significant first.

    Returns:
        a new generator.
    """
    return np.random.default_rng(list(keys))


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` (use :func:`derive_seed` to combine keys).

    Args:
        seed: the seed.
        device: where the generator draws.

    Returns:
        a new generator.
    """
    return torch.Generator(device=device).manual_seed(seed)
