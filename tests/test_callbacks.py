"""KNNMonitor during a real (tiny) pretraining run, and the run's checkpoint as a backbone."""

import json
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.errors import NotGeoreferencedWarning

from geodino.callbacks import KNNMonitor
from geodino.callbacks.knn import random_init_backbone
from geodino.datamodules import FolderDINODataModule
from geodino.export import load_backbone
from geodino.tasks import DINOv2Task


class Blobs(torch.utils.data.Dataset):
    """Small smooth 4-band images, deterministic."""

    band_names: ClassVar[list[str]] = ["b1", "b2", "b3", "b4"]

    def __init__(self, n: int = 32, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 4, size // 4, size // 4, generator=g)
        self.images = torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 1000

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def task() -> DINOv2Task:
    return DINOv2Task(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=4,
        model_kwargs={"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        head_nlayers=2,
        checkpoint_every_n_steps=2,
        keep_last_k=1,
        lr_reference_batch=8,
    )


def datamodule() -> FolderDINODataModule:
    return FolderDINODataModule(
        Blobs(),
        batch_size=4,
        seed=0,
        statistics_chips=16,
        multicrop={"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2},
    )


def trainer(root: Path, max_steps: int, **overrides: object) -> Trainer:
    return Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **overrides,
    )


def write_class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, level in (("dark", 200.0), ("bright", 900.0)):
        for i in range(8):
            data = (level + rng.normal(0, 60, (4, 28, 28))).clip(0, None).astype("uint16")
            path = root / label / f"{i}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(
                    path, "w", driver="GTiff", width=28, height=28, count=4, dtype="uint16"
                ) as dst:
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

    # the floor: the same ViT at random initialisation, scored once at the start, same split
    floor = monitor.random_init_accuracy
    assert floor is not None and written["random_init_accuracy"] == floor
    assert float(fit.callback_metrics["knn/accuracy_random_init"]) == floor
    random_init = random_init_backbone(model, seed=0)
    assert not torch.equal(random_init.pos_embed, model.model.pos_embed)
    assert monitor.evaluate(fit, model, random_init) == floor
    resumed = KNNMonitor(str(source))
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.random_init_accuracy == floor and resumed.history == monitor.history

    # the run's checkpoint is a backbone for the downstream tools, statistics included
    backbone = load_backbone(Path(fit.log_dir) / "checkpoints" / "last.ckpt")
    assert backbone.statistics is not None and backbone.band_names == ["b1", "b2", "b3", "b4"]
    images = torch.rand(2, 4, 28, 28) * 1000
    stats = backbone.statistics
    x = (images - torch.tensor(stats.mean).view(-1, 1, 1)) / torch.tensor(stats.std).view(-1, 1, 1)
    with torch.no_grad():
        expected = model.model.eval().forward_features(x)
    torch.testing.assert_close(backbone.tokens(images), expected)
