"""Evaluation of frozen backbones: k-NN, linear probes and their metrics."""

from geodino.evaluation.features import extract_features, majority_labels, read_labelled_chips
from geodino.evaluation.knn import knn_accuracy, knn_scores
from geodino.evaluation.linear import check_labels, group_split, linear_probe, logistic_regression
from geodino.evaluation.metrics import classification_report, plot_confusion_matrix

__all__ = [
    "check_labels",
    "classification_report",
    "extract_features",
    "group_split",
    "knn_accuracy",
    "knn_scores",
    "linear_probe",
    "logistic_regression",
    "majority_labels",
    "plot_confusion_matrix",
    "read_labelled_chips",
]
