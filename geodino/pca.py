"""Principal components of embedding vectors, shared by the embedding writers and the figures."""

import numpy as np

from geodino.errors import DataError
from geodino.seeding import numpy_rng

#: Embedding vectors sampled to fit the PCA.
PCA_SAMPLES = 100_000


def fit_pca(samples: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of embedding vectors.

    Args:
        samples: (N, D) finite vectors.
        k: components to keep.
        seed: seed of the subsample when N exceeds :data:`PCA_SAMPLES`.

    Returns:
        the mean (D,) and the components (k, D), largest variance first.

    Raises:
        DataError: if k is not in [1, D] or there are fewer than two samples.
    """
    dim = samples.shape[1]
    if not 1 <= k <= dim:
        raise DataError(f"--pca {k} must lie between 1 and the embedding size {dim}.")
    if len(samples) < 2:
        raise DataError("PCA needs at least two embedding vectors; embed a larger region.")
    if len(samples) > PCA_SAMPLES:
        pick = numpy_rng(seed).choice(len(samples), PCA_SAMPLES, replace=False)
        samples = samples[pick]
    x = samples.astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    # a sign convention, so reruns colour maps alike
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    return mean, (vt * signs[:, None])[:k]


def project(values: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Project (..., D) vectors onto PCA components; NaN stays NaN.

    Args:
        values: (..., D) vectors.
        mean: (D,) PCA mean.
        components: (k, D) PCA components.

    Returns:
        (..., k) float32 scores.
    """
    scores: np.ndarray = ((values.astype(np.float64) - mean) @ components.T).astype(np.float32)
    return scores
