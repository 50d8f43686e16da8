"""The evaluation protocols behind ``geodino knn`` and ``geodino probe``.

Frozen features of a labelled source, a (group-aware) split, a classifier, the baselines on
the same split, metrics as JSON and PNG.
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
from geodino.seeding import derive_seed

log = logging.getLogger(__name__)

#: DINO's k-NN protocol: neighbours and vote temperature.
KNN_KS = (10, 20, 100)
KNN_TEMPERATURE = 0.07
#: Inverse regularisation strengths swept by the logistic-regression probe.
PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
#: Draws of a repeated split before one that repeats an earlier split is kept.
_REDRAWS = 20
#: Name of the evaluated backbone among the methods of a report.
BACKBONE = "backbone"
#: Baselines whose features are standardised on the training side before the k-NN vote.
STANDARDISED = ("rcf", "band_stats")
#: Scores kept for the baselines and the repeats.
SCORE_KEYS = ("accuracy", "balanced_accuracy", "f1_macro")


def split_indices(
    data: LabelledImages, test_fraction: float = 0.3, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Train and test indices of a labelled source; one group never sits on both sides.

    Args:
        data: the labelled source (its ``split`` is used when it fixes one).
        test_fraction: test share of the samples (or groups) when the source fixes no split.
        seed: seed of the split.

    Returns:
        train indices, test indices.

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
    return train_idx, test_idx


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
    """
    train_idx, test_idx = split_indices(data, test_fraction, seed)
    return (features[train_idx], data.labels[train_idx], features[test_idx], data.labels[test_idx])


def repeated_splits(
    data: LabelledImages, test_fraction: float = 0.3, seed: int = 0, repeats: int = 1
) -> list[tuple[int, Tensor, Tensor]]:
    """``repeats`` different splits of a source: the first is ``seed``'s.

    The others are drawn from seeds derived from it; a draw that repeats an earlier split is
    drawn again.

    Args:
        data: the labelled source.
        test_fraction: test share when the source fixes no split.
        seed: seed of the first split.
        repeats: number of splits.

    Returns:
        the seed, train indices and test indices of each split; a source that fixes its
        split, or has too few groups, gives fewer different splits than asked (a warning
        says so).
    """
    from geodino.evaluation.linear import distinct_group_splits

    splits = [(seed, *split_indices(data, test_fraction, seed))]
    seen = {tuple(splits[0][2].tolist())}
    for r in range(1, repeats):
        for attempt in range(_REDRAWS):
            candidate = derive_seed(seed, r, attempt)
            train, test = split_indices(data, test_fraction, candidate)
            if tuple(test.tolist()) not in seen:
                break
        seen.add(tuple(test.tolist()))
        splits.append((candidate, train, test))
    if data.split is not None:
        possible: int | None = 1
    elif data.groups is not None:
        first_test = {data.groups[i] for i in splits[0][2]}
        possible = distinct_group_splits(data.groups, len(first_test))
    else:
        possible = None
    if possible is not None and possible < max(repeats, 2):
        what = (
            "its split column"
            if data.split is not None
            else f"{len(set(data.groups or []))} groups"
        )
        log.warning(
            "%s: %s allow %d different split(s): other seeds (--seed, --repeats) give the "
            "same test samples again; add groups (group_id values) for a spread of scores",
            data.source,
            what,
            possible,
        )
    elif len(seen) < repeats:
        log.warning("%s: %d repeats drew %d different splits", data.source, repeats, len(seen))
    return splits


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
    date_regex: str | None = None,
    date_format: str = "%Y%m%d",
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
        date_regex: regex of dated raster file names: read time series of the rasters.
        date_format: ``strptime`` format of the date group.

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
        date_regex,
        date_format,
    )
    backbone = backbone.for_bands(data.band_names, data.images.shape[-3], str(data.source))
    features = extract_features(
        backbone.model, data.images, backbone.normalize, batch_size, doy=data.doy
    )
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


def _method_features(
    data: LabelledImages, features: Tensor, backbone: Any, baselines: bool, seed: int
) -> dict[str, Tensor]:
    """The backbone's features, then each baseline's (see :mod:`geodino.evaluation.baselines`)."""
    from geodino.evaluation.baselines import baseline_features

    methods = {BACKBONE: features}
    if baselines:
        methods.update(baseline_features(data.images, backbone, seed, doy=data.doy))
    return methods


def _prepared(name: str, features: Tensor, train: Tensor) -> Tensor:
    """Standardise hand-made features on the training side.

    Their dimensions differ in scale by orders of magnitude, which a cosine k-NN would
    otherwise read as similarity.
    """
    if name not in STANDARDISED:
        return features
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-6)
    return (features - mean) / std


def _brief(result: dict[str, Any]) -> dict[str, float]:
    return {key: float(result[key]) for key in SCORE_KEYS}


def _spread(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean and standard deviation of each score over repeated splits."""
    out = {}
    for key in SCORE_KEYS:
        values = torch.tensor([float(r[key]) for r in results], dtype=torch.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(correction=0))
    return out


def _repeats(
    splits: Sequence[tuple[int, Tensor, Tensor]], scores: dict[str, Any]
) -> dict[str, Any]:
    return {
        "count": len(splits),
        "seeds": [seed for seed, _, _ in splits],
        "different_splits": len({tuple(test.tolist()) for _, _, test in splits}),
        "scores": scores,
    }


def run_knn(
    weights: str | Path,
    source: Any,
    out: str | Path,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    test_fraction: float = 0.3,
    seed: int = 0,
    repeats: int = 1,
    baselines: bool = True,
    **source_kwargs: Any,
) -> dict[str, Any]:
    """k-NN evaluation: cosine neighbours, temperature-weighted vote, one report per k.

    The baselines (per-band statistics, random convolutional features, the architecture at
    random init) are scored on the same split(s) with the same protocol. Writes ``knn.json``
    and ``knn_k<k>_confusion.png``/``knn_k<k>_per_class.png`` per k.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled source.
        out: folder for the JSON and PNGs.
        ks: neighbour counts.
        temperature: vote temperature.
        test_fraction: test share when the source fixes no split.
        seed: seed of the split (and of the random baselines).
        repeats: splits drawn (the first from ``seed``): with more than one, the report adds
            the mean and standard deviation of every score over them.
        baselines: score the baselines too.
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

    data, features, backbone = labelled_features(weights, source, **source_kwargs)
    splits = repeated_splits(data, test_fraction, seed, repeats)
    methods = _method_features(data, features, backbone, baselines, seed)
    n = len(data.class_names)
    # scores[method][k] = one classification report per split
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in methods}
    for _, train, test in splits:
        for name, values in methods.items():
            x = _prepared(name, values, train)
            for k in ks:
                votes = knn_scores(
                    x[train], data.labels[train], x[test], n, k=k, temperature=temperature
                )
                result = classification_report(votes.argmax(1), data.labels[test], data.class_names)
                result["k_used"] = min(k, len(train))
                scores[name].setdefault(str(k), []).append(result)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, train, test = splits[0]
    report: dict[str, Any] = {
        "protocol": "knn",
        "temperature": temperature,
        **_header(data, weights, train, test),
        "results": {k: runs[0] for k, runs in scores[BACKBONE].items()},
        "baselines": {
            name: {k: _brief(runs[0]) for k, runs in scores[name].items()}
            for name in methods
            if name != BACKBONE
        },
    }
    for k, result in report["results"].items():
        title = f"k-NN k={k}: accuracy {result['accuracy']:.3f}, macro F1 {result['f1_macro']:.3f}"
        plot_confusion_matrix(result, out / f"knn_k{k}_confusion.png", title)
        plot_per_class_scores(result, out / f"knn_k{k}_per_class.png", title)
    report["best_k"] = max(report["results"], key=lambda k: report["results"][k]["accuracy"])
    if repeats > 1:
        spread = {
            name: {k: _spread(runs) for k, runs in by_k.items()} for name, by_k in scores.items()
        }
        report["repeats"] = _repeats(splits, spread)
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
    repeats: int = 1,
    baselines: bool = True,
    **source_kwargs: Any,
) -> dict[str, Any]:
    """Linear probe: logistic regression on frozen, standardised features.

    C is chosen by a cross-validated sweep on the training split.

    The baselines (per-band statistics, random convolutional features, the architecture at
    random init) are probed on the same split(s) the same way. Writes ``probe.json``,
    ``probe_confusion.png`` and ``probe_per_class.png``.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled source.
        out: folder for the JSON and PNGs.
        cs: inverse regularisation strengths swept.
        folds: cross-validation folds of the sweep.
        test_fraction: test share when the source fixes no split.
        seed: seed of the split, the folds and the random baselines.
        repeats: splits drawn (the first from ``seed``): with more than one, the report adds
            the mean and standard deviation of every score over them.
        baselines: score the baselines too.
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

    data, features, backbone = labelled_features(weights, source, **source_kwargs)
    splits = repeated_splits(data, test_fraction, seed, repeats)
    methods = _method_features(data, features, backbone, baselines, seed)
    scores: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _, train, test in splits:
        for name, values in methods.items():
            preds, sweep = logistic_regression(
                values[train], data.labels[train], values[test], cs=cs, folds=folds, seed=seed
            )
            result = classification_report(preds, data.labels[test], data.class_names)
            scores[name].append({**result, "sweep": sweep})
    _, train, test = splits[0]
    result = dict(scores[BACKBONE][0])
    sweep = result.pop("sweep")
    report: dict[str, Any] = {
        "protocol": "logistic_regression",
        **_header(data, weights, train, test),
        "sweep": sweep,
        **result,
        "baselines": {
            name: {**_brief(runs[0]), "best_C": runs[0]["sweep"]["best_C"]}
            for name, runs in scores.items()
            if name != BACKBONE
        },
    }
    out = Path(out)
    title = (
        f"probe (C={sweep['best_C']:g}): accuracy {result['accuracy']:.3f}, "
        f"macro F1 {result['f1_macro']:.3f}"
    )
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(result, out / "probe_confusion.png", title)
    plot_per_class_scores(result, out / "probe_per_class.png", title)
    if repeats > 1:
        report["repeats"] = _repeats(splits, {name: _spread(runs) for name, runs in scores.items()})
    _write(report, out, "probe")
    return report


def _cell(report: dict[str, Any], method: str, k: str | None) -> str:
    """Accuracy of a method on the first split, or its mean +- std over the repeats."""
    repeats = report.get("repeats")
    if repeats:
        scores = repeats["scores"][method]
        spread = scores[k] if k is not None else scores
        return f"{spread['accuracy_mean']:.3f} +- {spread['accuracy_std']:.3f}"
    if method == BACKBONE:
        result = report["results"][k] if k is not None else report
    else:
        result = report["baselines"][method][k] if k is not None else report["baselines"][method]
    return f"{result['accuracy']:.3f}"


def summary(report: dict[str, Any], out: str | Path) -> str:
    """A few lines naming the scores and the files of a report.

    A table then sets the backbone's accuracy beside the baselines'.

    Args:
        report: what :func:`run_knn` or :func:`run_probe` returned.
        out: the folder it was written to.

    Returns:
        the text.
    """
    knn = report["protocol"] == "knn"
    lines = [
        f"{report['protocol']} on {report['source']}: {report['train_samples']} train / "
        f"{report['test_samples']} test samples, {len(report['classes'])} classes"
    ]
    rows = report["results"].items() if knn else [(f"C={report['sweep']['best_C']:g}", report)]
    for key, r in rows:
        label = f"k={key}" if knn else key
        lines.append(
            f"  {label:<10} accuracy {r['accuracy']:.3f}  balanced "
            f"{r['balanced_accuracy']:.3f}  macro F1 {r['f1_macro']:.3f}"
        )
    methods = [BACKBONE, *report.get("baselines", {})]
    if len(methods) > 1 or report.get("repeats"):
        columns: list[str | None] = list(report["results"]) if knn else [None]
        repeats = report.get("repeats")
        what = f"mean +- std over {repeats['count']} splits" if repeats else "same split"
        width = 16 if repeats else 7
        head = "".join(f"{'k=' + c if c else 'accuracy':>{width}}" for c in columns)
        lines.append(f"  accuracy ({what}):")
        lines.append(f"  {'':<12}{head}")
        for method in methods:
            cells = "".join(f"{_cell(report, method, c):>{width}}" for c in columns)
            lines.append(f"  {method:<12}{cells}")
    lines.append(f"  reports in {Path(out)}")
    return "\n".join(lines)
