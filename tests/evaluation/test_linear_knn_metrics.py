"""k-NN, logistic regression, linear probe, group splits and metrics on synthetic features."""

import numpy as np
import pytest
import torch

from geodino.errors import DataError
from geodino.evaluation import (
    check_labels,
    classification_report,
    group_split,
    knn_accuracy,
    knn_scores,
    linear_probe,
    logistic_regression,
    majority_labels,
    plot_confusion_matrix,
)


def clusters(n: int = 300, dim: int = 16, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def test_knn_vote_is_temperature_weighted() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.2]])
    scores = knn_scores(train, labels, query, 2, k=3, temperature=0.07)
    cos = (
        torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    )
    expected0 = (cos[0, 0] / 0.07).exp()
    torch.testing.assert_close(scores[0, 0], expected0)
    assert scores[0].argmax() == 0  # one close neighbour outvotes two far ones
    assert knn_scores(train, labels, query, 2, k=3, temperature=10.0)[0].argmax() == 1


def test_classifiers_separate_clusters() -> None:
    x, y = clusters()
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10) > 0.95
    preds, sweep = logistic_regression(x[:200], y[:200], x[200:])
    assert (preds == y[200:]).float().mean() > 0.95 and sweep["best_C"] in (
        0.01,
        0.1,
        1.0,
        10.0,
        100.0,
    )
    assert (linear_probe(x[:200], y[:200], x[200:], 3) == y[200:]).float().mean() > 0.95
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    assert knn_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:]) < 0.6


def test_report_matches_hand_counts(tmp_path) -> None:
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 2])
    report = classification_report(preds, target, ["water", "crop", "urban"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["crop"]["recall"] == pytest.approx(2 / 3)
    assert report["per_class"]["water"]["precision"] == pytest.approx(1 / 3)
    assert report["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [1, 0, 1]]
    assert plot_confusion_matrix(report, tmp_path / "cm.png").stat().st_size > 0


def test_group_split_never_straddles() -> None:
    groups = [f"tile{i // 5}" for i in range(100)]
    train, test = group_split(100, groups, 0.3, seed=0)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len(train) + len(test) == 100


def test_bad_label_sets_are_refused() -> None:
    with pytest.raises(DataError, match="single class"):
        check_labels(torch.zeros(5, dtype=torch.long), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(DataError, match=r"\['urban'\] occur in the test split"):
        check_labels(torch.tensor([0, 1, 0]), torch.tensor([2]), ["water", "crop", "urban"])


def test_majority_labels_respect_purity_and_nodata() -> None:
    masks = torch.full((3, 4, 4), 255)
    masks[0] = 2
    masks[1, :, :3] = 1
    masks[1, :, 3] = 0
    labels, keep = majority_labels(masks, ignore_index=255, min_purity=0.7)
    assert labels[:2].tolist() == [2, 1] and keep.tolist() == [True, True, False]
    assert np.isclose(float(keep.float().mean()), 2 / 3)
