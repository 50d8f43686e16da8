"""Weighted k-nearest-neighbour classification of frozen features (the DINO protocol)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from geodino.errors import DataError


def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Class scores of test samples by a temperature-weighted vote of their cosine neighbours.

    Each of the ``k`` nearest training samples (cosine similarity ``s``) votes for its class
    with weight ``exp(s / temperature)``, as in DINO's k-NN evaluation.

    Args:
        train_features: (N, D) features of the labelled samples.
        train_labels: (N,) integer labels in ``[0, num_classes)``.
        test_features: (M, D) features to classify.
        num_classes: number of classes.
        k: neighbours per test sample (capped at N).
        temperature: temperature of the vote weights.
        chunk: test samples per similarity block (bounds memory).

    Returns:
        (M, num_classes) vote scores.

    Raises:
        DataError: if there are no training samples or labels fall outside the classes.
    """
    if len(train_features) == 0:
        raise DataError("k-NN needs at least one labelled training sample.")
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise DataError(
            f"k-NN labels must lie in [0, {num_classes}); got {int(train_labels.min())}.."
            f"{int(train_labels.max())}."
        )
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, len(train))
    out = []
    for start in range(0, len(test), chunk):
        sims = test[start : start + chunk] @ train.T
        top, idx = sims.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(top), num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[idx].long(), weights)
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of :func:`knn_scores` predictions.

    Args:
        train_features: (N, D) features of the labelled samples.
        train_labels: (N,) labels.
        test_features: (M, D) features to classify.
        test_labels: (M,) true labels.
        k: neighbours per test sample.
        temperature: temperature of the vote weights.

    Returns:
        the fraction of test samples classified correctly.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return float((scores.argmax(1) == test_labels).float().mean())
