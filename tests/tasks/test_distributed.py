"""DDP with two CPU processes (gloo) through the real ``geodino fit`` command."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import yaml
from rasterio.transform import from_origin

from geodino.demo import write_demo_catalog


def write_catalog(root: Path) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i, crs in enumerate(("EPSG:32631", "EPSG:32631")):
        base = rng.integers(100, 3000, size=(4, 12, 12)).astype("uint16")
        data = base.repeat(8, 1).repeat(8, 2)
        profile = {
            "driver": "GTiff",
            "height": 96,
            "width": 96,
            "count": 4,
            "dtype": "uint16",
            "crs": crs,
            "nodata": 0,
            "transform": from_origin(500000 + i * 2000, 5000000, 10, 10),
        }
        with rasterio.open(root / f"scene{i}.tif", "w", **profile) as dst:
            dst.write(data)


def trainer(root: Path, steps: int, **more: object) -> dict[str, object]:
    """A quiet CPU trainer section writing to ``root``."""
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    return {
        "accelerator": "cpu",
        "max_steps": steps,
        "default_root_dir": str(root),
        **quiet,
        **more,
    }


def config(tmp_path: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": trainer(tmp_path / "run", 6),
        "model": {
            "class_path": "geodino.tasks.DINOv2Task",
            "init_args": {
                "in_chans": 4,
                "model_kwargs": {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2},
                "head_out_dim": 64,
                "head_hidden_dim": 32,
                "head_bottleneck_dim": 16,
                "checkpoint_every_n_steps": 3,
                "keep_last_k": 3,
                "lr_reference_batch": 8,
            },
        },
        "data": {
            "class_path": "geodino.datamodules.GeoDINODataModule",
            "init_args": {
                "dataset": {
                    "class_path": "geodino.datasets.MultiBandGeoTIFF",
                    "init_args": {"paths": str(tmp_path / "tiles")},
                },
                "chip_size": 32,
                "batch_size": 4,
                "statistics_chips": 8,
                "multicrop": {
                    "global_crops_size": 28,
                    "local_crops_size": 14,
                    "local_crops_number": 2,
                },
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def geodino(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "geodino", *args], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_ddp_two_processes_then_resume_on_one(tmp_path: Path) -> None:
    write_catalog(tmp_path / "tiles")
    cfg = config(tmp_path)
    geodino("fit", "--config", str(cfg), "--trainer.devices=2", "--trainer.strategy=ddp")
    ckpts = tmp_path / "run" / "checkpoints"
    at3 = torch.load(ckpts / "step00000003.ckpt", weights_only=True)
    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert final["global_step"] == 6
    # two processes x batch 4 per step: the stream advanced 8 samples per step
    assert at3["GeoDINODataModule"]["samples_seen"] == 24
    assert final["GeoDINODataModule"]["samples_seen"] == 48

    # the DDP checkpoint resumes on one process and continues the stream where it stopped
    geodino(
        "fit",
        "--config",
        str(cfg),
        "--trainer.devices=1",
        f"--trainer.default_root_dir={tmp_path / 'resumed'}",
        f"--ckpt_path={ckpts / 'step00000003.ckpt'}",
    )
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    assert resumed["GeoDINODataModule"]["samples_seen"] == 24 + 3 * 4
    # the loss centres and the teacher travelled through the checkpoint intact
    teacher_keys = [k for k in at3["state_dict"] if k.startswith("teacher.")]
    assert teacher_keys and all(
        torch.isfinite(resumed["state_dict"][k]).all() for k in teacher_keys
    )


def mixed_config(tmp_path: Path, strategy: str) -> Path:
    root = write_demo_catalog(tmp_path / "demo", seed=0, scene_size=64).root
    sources = ["geodino.demo.DemoSentinel2", "geodino.demo.DemoSentinel1"]
    sources.append("geodino.demo.eightband.DemoWorldView3")
    cfg = {
        "seed_everything": 0,
        "trainer": trainer(tmp_path / strategy, 4, devices=2, strategy=strategy),
        "model": {
            "class_path": "geodino.tasks.DINOv2Task",
            "init_args": {
                "model": "panopticon_vitb14",
                "in_chans": 23,
                "source_heads": 3,
                "model_kwargs": {
                    "img_size": 28,
                    "embed_dim": 32,
                    "depth": 1,
                    "num_heads": 2,
                    "attn_dim": 32,
                    "attn_heads": 2,
                    "sensors": ["sentinel2", "sentinel1", "worldview3"],
                },
                "head_out_dim": 64,
                "head_hidden_dim": 32,
                "head_bottleneck_dim": 16,
                "checkpoint_every_n_steps": 4,
                "lr_reference_batch": 8,
            },
        },
        "data": {
            "class_path": "geodino.datamodules.MixedGeoDataModule",
            "init_args": {
                "datasets": [{"class_path": c, "init_args": {"paths": str(root)}} for c in sources],
                "aoi": str(root / "aoi.gpkg"),
                "aoi_query": "split == 'train'",
                "chip_size": 28,
                "min_coverage": 0.5,
                "max_nodata": 0.5,
                "batch_size": 4,
                "statistics_chips": 4,
                "multicrop": {
                    "global_crops_size": 28,
                    "local_crops_size": 14,
                    "local_crops_number": 2,
                },
            },
        },
    }
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ddp_trains_heads_per_source_when_it_finds_unused_parameters(tmp_path: Path) -> None:
    # each step trains one source's heads: plain DDP would fail at the second step
    out = subprocess.run(
        [sys.executable, "-m", "geodino", "fit", "--config", str(mixed_config(tmp_path, "ddp"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0
    assert "--trainer.strategy=ddp_find_unused_parameters_true" in out.stderr
    assert not (tmp_path / "ddp" / "checkpoints" / "last.ckpt").exists()

    geodino("fit", "--config", str(mixed_config(tmp_path, "ddp_find_unused_parameters_true")))
    last = tmp_path / "ddp_find_unused_parameters_true" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4
    for key in ("dino_head", "dino_head_1", "dino_head_2"):
        assert f"teacher.{key}.last_layer.parametrizations.weight.original0" in state["state_dict"]
