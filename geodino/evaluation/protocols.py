"""The evaluation protocols behind ``geodino knn`` and ``geodino probe``: frozen features of a
labelled source, a (group-aware) split, a classifier, metrics as JSON and PNG.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geodino.errors import DataError
from geodino.evaluation.sources import LabelledImages, read_labelled_source

log = logging.getLogger(__name__)

#: DINO's k-NN protocol: neighbours and vote temperature.
KNN_KS = (10, 20, 100)
KNN_TEMPERATURE = 0.07
#: Inverse regularisation strengths swept by the logistic-regression probe.
PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def split_features(
    data: LabelledImages, features: Tensor, test_fraction: float = 0.3, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and test features and labels; one group never sits on both sides.

    Args:
        data: the labelled source (its ``split`` is used when it fixes one).
        features: (N, D) features of ``data.images``.
        test_fraction: test share of the samples (or groups) when the source fixes no split.
        seed: seed of the split.

    Returns:
        train features, train labels, test features, test labels.

    Raises:
        DataError: with a single class, too few samples or groups, or a test class that
            never occurs in training.
    """
    from geodino.evaluation.linear import check_labels, group_split

    classes = sorted(set(data.labels.tolist()))
    if len(classes) < 2:
        name = data.class_names[classes[0]] if classes else "none"
        raise DataError(
            f"{data.source} holds a single class ({name!r}, {len(data)} samples): evaluation "
            "needs at least two classes; check the labels (or --label_column)."
        )
    if data.split is not None:
        train = torch.tensor([s == "train" for s in data.split])
        if train.all() or not train.any():
            raise DataError(
                f"the split column of {data.source} puts every sample on one side; mark some "
                "samples 'train' and others 'test'."
            )
        train_idx, test_idx = train.nonzero()[:, 0], (~train).nonzero()[:, 0]
    else:
        if len(data) < 4:
            raise DataError(f"{data.source} has {len(data)} samples; evaluation needs more.")
        train_idx, test_idx = map(
            torch.as_tensor,
            group_split(len(data), data.groups, test_fraction, seed, labels=data.labels.tolist()),
        )
    if data.groups is not None:
        shared = {data.groups[i] for i in train_idx} & {data.groups[i] for i in test_idx}
        if shared:
            raise DataError(
                f"groups {sorted(shared)[:5]} of {data.source} have samples in both the train "
                "and the test split; give each group one split value."
            )
    check_labels(data.labels[train_idx], data.labels[test_idx], data.class_names)
    return (features[train_idx], data.labels[train_idx], features[test_idx], data.labels[test_idx])


def labelled_features(
    weights: str | Path,
    source: Any,
    rasters: Sequence[str | Path] | None = None,
    chip_size: int | None = None,
    label_column: str = "label",
    group_column: str = "group_id",
    split_column: str | None = None,
    band_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> tuple[LabelledImages, Tensor, Any]:
    """Read a backbone and a labelled source, check their bands, and extract CLS features.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: see :func:`~geodino.evaluation.sources.read_labelled_source`.
        rasters: imagery under vector labels.
        chip_size: chip side for vector labels (default: the backbone's training size).
        label_column: class column of vector labels.
        group_column: group column of vector labels.
        split_column: column fixing the split of vector labels.
        band_names: band names of folder/JSON images.
        batch_size: images per forward pass.

    Returns:
        the labelled images, their (N, D) features and the backbone.
    """
    from geodino.evaluation.features import extract_features
    from geodino.export import load_backbone

    backbone = load_backbone(weights)
    data = read_labelled_source(
        source,
        rasters,
        chip_size or backbone.chip_size,
        label_column,
        group_column,
        split_column,
        band_names,
    )
    backbone.check_bands(data.band_names, data.images.shape[1], str(data.source))
    features = extract_features(backbone.model, data.images, backbone.normalize, batch_size)
    return data, features, backbone


def _write(report: dict[str, Any], out: Path, name: str) -> Path:
    path = out / f"{name}.json"
    path.write_text(json.dumps(report, indent=1))
    return path


def _header(data: LabelledImages, weights: Any, train: Tensor, test: Tensor) -> dict[str, Any]:
    return {
        "weights": str(weights),
        "source": data.source,
        "classes": data.class_names,
        "train_samples": len(train),
        "test_samples": len(test),
        "grouped": data.groups is not None,
    }


def run_knn(
    weights: str | Path,
    source: Any,
    out: str | Path,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    test_fraction: float = 0.3,
    seed: int = 0,
    **source_kwargs: Any,
) -> dict[str, Any]:
    """k-NN evaluation: cosine neighbours, temperature-weighted vote, one report per k.

    Writes ``knn.json`` and ``knn_k<k>_confusion.png``/``knn_k<k>_per_class.png`` per k.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled source.
        out: folder for the JSON and PNGs.
        ks: neighbour counts.
        temperature: vote temperature.
        test_fraction: test share when the source fixes no split.
        seed: seed of the split.
        **source_kwargs: passed to :func:`labelled_features`.

    Returns:
        the written report.
    """
    from geodino.evaluation.knn import knn_scores
    from geodino.evaluation.metrics import (
        classification_report,
        plot_confusion_matrix,
        plot_per_class_scores,
    )

    data, features, _ = labelled_features(weights, source, **source_kwargs)
    x_train, y_train, x_test, y_test = split_features(data, features, test_fraction, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "protocol": "knn",
        "temperature": temperature,
        **_header(data, weights, y_train, y_test),
        "results": {},
    }
    n = len(data.class_names)
    for k in ks:
        scores = knn_scores(x_train, y_train, x_test, n, k=k, temperature=temperature)
        result = classification_report(scores.argmax(1), y_test, data.class_names)
        result["k_used"] = min(k, len(y_train))
        report["results"][str(k)] = result
        title = f"k-NN k={k}: accuracy {result['accuracy']:.3f}, macro F1 {result['f1_macro']:.3f}"
        plot_confusion_matrix(result, out / f"knn_k{k}_confusion.png", title)
        plot_per_class_scores(result, out / f"knn_k{k}_per_class.png", title)
    report["best_k"] = max(report["results"], key=lambda k: report["results"][k]["accuracy"])
    _write(report, out, "knn")
    return report


def run_probe(
    weights: str | Path,
    source: Any,
    out: str | Path,
    cs: Sequence[float] = PROBE_CS,
    folds: int = 3,
    test_fraction: float = 0.3,
    seed: int = 0,
    **source_kwargs: Any,
) -> dict[str, Any]:
    """Linear probe: logistic regression on frozen, standardised features, C chosen by a
    cross-validated sweep on the training split.

    Writes ``probe.json``, ``probe_confusion.png`` and ``probe_per_class.png``.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled source.
        out: folder for the JSON and PNGs.
        cs: inverse regularisation strengths swept.
        folds: cross-validation folds of the sweep.
        test_fraction: test share when the source fixes no split.
        seed: seed of the split and the folds.
        **source_kwargs: passed to :func:`labelled_features`.

    Returns:
        the written report.
    """
    from geodino.evaluation.linear import logistic_regression
    from geodino.evaluation.metrics import (
        classification_report,
        plot_confusion_matrix,
        plot_per_class_scores,
    )

    data, features, _ = labelled_features(weights, source, **source_kwargs)
    x_train, y_train, x_test, y_test = split_features(data, features, test_fraction, seed)
    preds, sweep = logistic_regression(x_train, y_train, x_test, cs=cs, folds=folds, seed=seed)
    result = classification_report(preds, y_test, data.class_names)
    report = {
        "protocol": "logistic_regression",
        **_header(data, weights, y_train, y_test),
        "sweep": sweep,
        **result,
    }
    out = Path(out)
    title = (
        f"probe (C={sweep['best_C']:g}): accuracy {result['accuracy']:.3f}, "
        f"macro F1 {result['f1_macro']:.3f}"
    )
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(result, out / "probe_confusion.png", title)
    plot_per_class_scores(result, out / "probe_per_class.png", title)
    _write(report, out, "probe")
    return report


def summary(report: dict[str, Any], out: str | Path) -> str:
    """A few lines naming the scores and the files of a report.

    Args:
        report: what :func:`run_knn` or :func:`run_probe` returned.
        out: the folder it was written to.

    Returns:
        the text.
    """
    lines = [
        f"{report['protocol']} on {report['source']}: {report['train_samples']} train / "
        f"{report['test_samples']} test samples, {len(report['classes'])} classes"
    ]
    rows = (
        report["results"].items()
        if report["protocol"] == "knn"
        else [(f"C={report['sweep']['best_C']:g}", report)]
    )
    for key, r in rows:
        label = f"k={key}" if report["protocol"] == "knn" else key
        lines.append(
            f"  {label:<10} accuracy {r['accuracy']:.3f}  balanced "
            f"{r['balanced_accuracy']:.3f}  macro F1 {r['f1_macro']:.3f}"
        )
    lines.append(f"  reports in {Path(out)}")
    return "\n".join(lines)
