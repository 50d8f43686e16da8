"""KNNMonitor during a real (tiny) pretraining run, and the run's checkpoint as a backbone."""

import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from geodino.callbacks import KNNMonitor
from geodino.export import load_backbone
from tests.tasks.test_dinov2 import datamodule, task, trainer


def write_class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, level in (("dark", 200.0), ("bright", 900.0)):
        for i in range(8):
            data = (level + rng.normal(0, 60, (4, 28, 28))).clip(0, None).astype("uint16")
            path = root / label / f"{i}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path, "w", driver="GTiff", width=28, height=28, count=4,
                                   dtype="uint16") as dst:
                    dst.write(data)
    (root / "labels.txt").write_text("0,dark\n1,bright\n")
    return root


def test_knn_monitor_logs_accuracy_every_n_steps(tmp_path: Path) -> None:
    source = write_class_folders(tmp_path / "labelled")
    monitor = KNNMonitor(str(source), every_n_steps=2, k=5)
    model = task()
    fit = trainer(tmp_path / "run", 4, callbacks=[monitor])
    fit.fit(model, datamodule())
    assert [row["step"] for row in monitor.history] == [2.0, 4.0]
    assert all(0.0 <= row["knn/accuracy"] <= 1.0 for row in monitor.history)
    assert float(fit.callback_metrics["knn/accuracy"]) == monitor.history[-1]["knn/accuracy"]
    written = json.loads((Path(fit.log_dir) / "knn_monitor.json").read_text())
    assert written["history"] == monitor.history and written["k"] == 5

    # the run's checkpoint is a backbone for the downstream tools, statistics included
    backbone = load_backbone(Path(fit.log_dir) / "checkpoints" / "last.ckpt")
    assert backbone.statistics is not None and backbone.band_names == ["b1", "b2", "b3", "b4"]
    images = torch.rand(2, 4, 28, 28) * 1000
    stats = backbone.statistics
    x = (images - torch.tensor(stats.mean).view(-1, 1, 1)) / torch.tensor(stats.std).view(-1, 1, 1)
    with torch.no_grad():
        expected = model.model.eval().forward_features(x)
    torch.testing.assert_close(backbone.tokens(images), expected)
