"""A tiny deterministic ``geodino fit`` set-up run as real subprocesses by the reliability tests."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
STEPS = 24
EVERY = 6
VAL_EVERY = 8


def write_catalog(root: Path) -> None:
    """Two 4-band uint16 scenes with block structure and a nodata border."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(2):
        base = rng.integers(100, 3000, size=(4, 12, 12)).astype("uint16")
        data = base.repeat(8, 1).repeat(8, 2)
        data[:, :3] = 0
        profile = {
            "driver": "GTiff",
            "height": 96,
            "width": 96,
            "count": 4,
            "dtype": "uint16",
            "crs": "EPSG:32631",
            "nodata": 0,
            "compress": "deflate",
            "transform": from_origin(500000 + i * 2000, 5000000, 10, 10),
        }
        with rasterio.open(root / f"scene{i}.tif", "w", **profile) as dst:
            dst.write(data)


def write_config(
    tmp: Path,
    run: str,
    callbacks: list[dict] | None = None,
    plugins: list[dict] | None = None,
    **trainer_overrides: Any,
) -> Path:
    """A tiny deterministic CPU config: 24 steps, checkpoints every 6, validation every 8.

    Args:
        tmp: folder holding ``tiles/``; the run goes to ``tmp/run``.
        run: name of the run and of the config file.
        callbacks: extra ``trainer.callbacks`` (class_path/init_args).
        plugins: ``trainer.plugins`` (class_path/init_args).
        **trainer_overrides: other ``trainer`` settings.

    Returns:
        the config file.
    """
    trainer: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": STEPS,
        "deterministic": True,
        "default_root_dir": str(tmp / run),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "val_check_interval": VAL_EVERY,
        "check_val_every_n_epoch": None,
        "num_sanity_val_steps": 0,
    }
    trainer.update(trainer_overrides)
    if callbacks:
        trainer["callbacks"] = callbacks
    if plugins:
        trainer["plugins"] = plugins
    cfg = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "class_path": "geodino.tasks.DINOv2Task",
            "init_args": {
                "in_chans": 4,
                "model_kwargs": {
                    "img_size": 28,
                    "embed_dim": 32,
                    "depth": 2,
                    "num_heads": 2,
                    "drop_path_rate": 0.1,
                },
                "head_out_dim": 64,
                "head_hidden_dim": 32,
                "head_bottleneck_dim": 16,
                "checkpoint_every_n_steps": EVERY,
                "keep_last_k": 10,
                "lr_reference_batch": 8,
            },
        },
        "data": {
            "class_path": "geodino.datamodules.GeoDINODataModule",
            "init_args": {
                "dataset": {
                    "class_path": "geodino.datasets.MultiBandGeoTIFF",
                    "init_args": {"paths": str(tmp / "tiles")},
                },
                "chip_size": 28,
                "batch_size": 4,
                "statistics_chips": 8,
                "val_length": 4,
                "multicrop": {
                    "global_crops_size": 28,
                    "local_crops_size": 14,
                    "local_crops_number": 2,
                },
            },
        },
    }
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def geodino(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m geodino`` with the fault plugins importable."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    return subprocess.run(
        [sys.executable, "-m", "geodino", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
