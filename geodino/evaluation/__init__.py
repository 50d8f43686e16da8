"""Evaluation of frozen backbones: k-NN, linear probes and their metrics."""

from geodino.evaluation.baselines import (
    band_statistics_features,
    baseline_features,
    random_conv_features,
    random_init_twin,
)
from geodino.evaluation.features import extract_features, majority_labels, read_labelled_chips
from geodino.evaluation.knn import knn_accuracy, knn_scores
from geodino.evaluation.linear import check_labels, group_split, linear_probe, logistic_regression
from geodino.evaluation.metrics import (
    classification_report,
    plot_confusion_matrix,
    plot_per_class_scores,
)
from geodino.evaluation.protocols import repeated_splits, run_knn, run_probe
from geodino.evaluation.sources import LabelledImages, read_labelled_source

__all__ = [
    "LabelledImages",
    "band_statistics_features",
    "baseline_features",
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
    "plot_per_class_scores",
    "random_conv_features",
    "random_init_twin",
    "read_labelled_chips",
    "read_labelled_source",
    "repeated_splits",
    "run_knn",
    "run_probe",
]
