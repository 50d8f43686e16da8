"""Linear evaluation of frozen features: logistic regression with a C sweep, linear probe."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geodino.errors import DataError


def check_labels(train_labels: Tensor, test_labels: Tensor, class_names: Sequence[str]) -> None:
    """Refuse label sets no classifier can learn from.

    Args:
        train_labels: (N,) training labels.
        test_labels: (M,) test labels.
        class_names: names of the classes.

    Raises:
        DataError: with one class only, or a test class absent from training.
    """
    train = set(train_labels.tolist())
    if len(train) < 2:
        raise DataError(
            f"the training labels hold a single class ({sorted(train)}): a classifier needs "
            "at least two; check the labels source or the split."
        )
    missing = sorted(set(test_labels.tolist()) - train)
    if missing:
        names = [class_names[i] if i < len(class_names) else str(i) for i in missing]
        raise DataError(
            f"classes {names} occur in the test split but never in training; add training "
            "samples of them or change the split (group_id, test fraction)."
        )


def group_split(
    n: int,
    groups: Sequence[Any] | None,
    test_fraction: float = 0.3,
    seed: int = 0,
    labels: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices; samples sharing a group never straddle the split.

    With groups, the groups are visited in an order drawn from ``seed`` and each joins the
    test side when that brings the test side's class counts closer to ``test_fraction`` of
    every class (without labels: until the test side holds ``test_fraction`` of the samples),
    never taking the last training group of a class. Each seed draws its own split as far
    as the number of groups allows.

    Args:
        n: number of samples.
        groups: group of each sample (e.g. ``group_id``), or None for a plain random split.
        test_fraction: fraction of samples (or groups) in the test split.
        seed: seed of the split.
        labels: class of each sample: when given, the split keeps the class proportions as
            far as the groups allow (stratified), so that rare classes reach both sides.

    Returns:
        train and test index arrays.

    Raises:
        DataError: with fewer than two groups.
    """
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    from geodino.seeding import numpy_rng

    splitter: Any
    y = np.asarray(labels) if labels is not None else None
    if groups is None:
        if y is not None and np.bincount(y)[np.unique(y)].min() >= 2:
            splitter = StratifiedShuffleSplit(
                n_splits=1, test_size=test_fraction, random_state=seed
            )
            train, test = next(splitter.split(np.zeros(n), y))
            return np.asarray(train), np.asarray(test)
        splitter = ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        train, test = next(splitter.split(np.zeros(n)))
        return np.asarray(train), np.asarray(test)
    names = sorted(set(groups), key=str)
    if len(names) < 2:
        raise DataError("a group-aware split needs at least two groups (group_id values).")
    index = {g: i for i, g in enumerate(names)}
    member = np.asarray([index[g] for g in groups], dtype=np.int64)
    classes = np.asarray(y if y is not None else np.zeros(n), dtype=np.int64)
    width = int(classes.max()) + 1
    # samples of each class in each group, (groups, classes)
    flat = np.bincount(member * width + classes, minlength=len(names) * width)
    counts = flat.reshape(len(names), width).astype(np.float64)
    total = counts.sum(0)
    target = test_fraction * total
    test = np.zeros(len(names), dtype=bool)
    held = np.zeros_like(total)
    for g in numpy_rng(seed).permutation(len(names)):
        if test.sum() == len(names) - 1:
            break
        after = held + counts[g]
        keeps_training = ((total - after) > 0) | (total == 0)
        closer = np.abs(after - target).sum() < np.abs(held - target).sum()
        if (closer or not test.any()) and keeps_training[total > 0].all():
            test[g], held = True, after
    if not test.any():  # every group holds the last training sample of some class
        test[numpy_rng(seed).integers(len(names))] = True
    return np.flatnonzero(~test[member]), np.flatnonzero(test[member])


def distinct_group_splits(groups: Sequence[Any], test_groups: int) -> int:
    """How many different test sides ``test_groups`` of the groups can form.

    Args:
        groups: group of each sample.
        test_groups: groups on the test side.

    Returns:
        the binomial coefficient of the number of groups over ``test_groups``.
    """
    from math import comb

    return comb(len(set(groups)), test_groups)


def logistic_regression(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    folds: int = 3,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Any]]:
    """Multinomial logistic regression on standardised features, C chosen by cross-validation.

    Args:
        train_features: (N, D) training features.
        train_labels: (N,) training labels.
        test_features: (M, D) features to classify.
        cs: inverse regularisation strengths swept.
        folds: cross-validation folds for the sweep (stratified).
        seed: seed of the folds.

    Returns:
        test predictions (M,) and the sweep (best C and mean CV accuracy per C).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = train_features.double().numpy(), train_labels.numpy()
    min_count = int(np.bincount(y).clip(min=0)[np.unique(y)].min())
    folds = max(2, min(folds, min_count))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for c in cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        scores[c] = float(cross_val_score(model, x, y, cv=cv).mean()) if min_count >= 2 else 0.0
    best = max(scores, key=scores.__getitem__)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=2000))
    model.fit(x, y)
    preds = torch.as_tensor(model.predict(test_features.double().numpy()))
    return preds, {"best_C": best, "cv_accuracy": {str(c): s for c, s in scores.items()}}


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> Tensor:
    """A linear layer on frozen, batch-normalised features trained with AdamW.

    Args:
        train_features: (N, D) training features.
        train_labels: (N,) training labels.
        test_features: (M, D) features to classify.
        num_classes: number of classes.
        epochs: passes over the training features.
        lr: learning rate.
        weight_decay: AdamW weight decay.
        batch_size: features per step.
        seed: seed of initialisation and shuffling.

    Returns:
        test predictions (M,).
    """
    from geodino.seeding import derive_seed, torch_generator

    generator = torch_generator(derive_seed(seed, 0))
    dim = train_features.shape[1]
    # nn.Linear draws its initial weights from the global generator only: fork it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 1))
        probe = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = train_features.float(), train_labels.long()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            loss = nn.functional.cross_entropy(probe(x[idx]), y[idx])
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
    probe.eval()
    with torch.no_grad():
        logits: Tensor = probe(test_features.float())
    return logits.argmax(1)
