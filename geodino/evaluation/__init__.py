"""Evaluation of frozen backbones: k-NN, linear probes and their metrics."""

from geodino.evaluation.features import extract_features, majority_labels, read_labelled_chips
from geodino.evaluation.knn import knn_accuracy, knn_scores

__all__ = [
    "extract_features",
    "knn_accuracy",
    "knn_scores",
    "majority_labels",
    "read_labelled_chips",
]
