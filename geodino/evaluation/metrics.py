"""Classification metrics of an evaluation, as a JSON-ready report and a confusion-matrix PNG."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_report(
    preds: Tensor, target: Tensor, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro precision/recall/F1, per-class scores, confusion.

    Args:
        preds: (N,) predicted class indices.
        target: (N,) true class indices.
        class_names: name of each class index.

    Returns:
        a JSON-serialisable report.
    """
    n = len(class_names)
    per_class = {
        "precision": multiclass_precision(preds, target, average="none", num_classes=n),
        "recall": multiclass_recall(preds, target, average="none", num_classes=n),
        "f1": multiclass_f1_score(preds, target, average="none", num_classes=n),
    }
    support = torch.bincount(target, minlength=n)
    present = support > 0
    return {
        "accuracy": float(multiclass_accuracy(preds, target, average="micro", num_classes=n)),
        # balanced accuracy: mean recall over the classes that occur in the test set
        "balanced_accuracy": float(per_class["recall"][present].mean()),
        "precision_macro": float(per_class["precision"][present].mean()),
        "recall_macro": float(per_class["recall"][present].mean()),
        "f1_macro": float(per_class["f1"][present].mean()),
        "per_class": {
            name: {
                **{k: float(v[i]) for k, v in per_class.items()},
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, target, num_classes=n).tolist(),
        "class_names": list(class_names),
        "samples": len(target),
    }


def plot_confusion_matrix(report: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Draw the report's confusion matrix, rows normalised to recall.

    Args:
        report: what :func:`classification_report` returned.
        out: PNG to write.
        title: figure title.

    Returns:
        the PNG path.
    """
    from geodino.plotting import _pyplot, save_figure

    plt = _pyplot()
    matrix = torch.tensor(report["confusion_matrix"], dtype=torch.float64)
    norm = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    names = report["class_names"]
    size = 1.2 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_title(
        title or f"accuracy {report['accuracy']:.3f}, macro F1 {report['f1_macro']:.3f}", fontsize=9
    )
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, out)


def plot_per_class_scores(report: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Draw the report's per-class precision, recall and F1 as grouped bars.

    Args:
        report: what :func:`classification_report` returned.
        out: PNG to write.
        title: figure title.

    Returns:
        the PNG path.
    """
    from geodino.plotting import _pyplot, save_figure

    plt = _pyplot()
    names = report["class_names"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 3.2))
    width = 0.27
    for i, key in enumerate(("precision", "recall", "f1")):
        values = [report["per_class"][name][key] for name in names]
        ax.bar([j + (i - 1) * width for j in range(len(names))], values, width, label=key)
    ax.set_xticks(
        range(len(names)),
        [f"{name}\n(n={report['per_class'][name]['support']})" for name in names],
        fontsize=7,
    )
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(title or f"per-class scores, macro F1 {report['f1_macro']:.3f}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)
