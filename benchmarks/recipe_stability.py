"""Does a pretraining recipe hold on varied data? Catalog x recipe x steps stability matrix.

For each generated catalog (``benchmarks/stability_catalogs.py``: spectral classes, texture-only
classes at two scales, SAR speckle; 8, 13 and 2 bands), recipe and seed, one run of
``max(--steps)`` optimiser steps records at each step of ``--steps``: the teacher's target
entropy over its maximum log K, the teacher's feature std, k-NN accuracy of the teacher's CLS
features on held-out single-class chips against the same ViT at random initialisation
(``KNNMonitor``), and the collapse guard's verdict. Prints a markdown table and writes it with
the rows as JSON.

Recipes: ``demo`` is ``configs/demo.yaml``'s task and data settings; ``configs`` is the
full-size configs' task settings (``configs/sentinel2.yaml``: ``DINOv2Task``'s defaults plus
the config's from-scratch keys) scaled down to the demo's ViT, prototypes and batch;
``defaults`` is ``DINOv2Task``'s defaults alone (DINOv2's recipe) at the same size.
``--set key=value`` changes task arguments of every recipe and ``--multicrop key=value`` its
multi-crop settings (to try a fix). ``--size ci`` shrinks model, chips and catalogs to CI
size.

    python benchmarks/recipe_stability.py --catalogs texture13_fine --recipes demo \
        --steps 300 1000 --seeds 0 --out stability
"""

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

# run as a script, or imported with benchmarks/ on sys.path (tests/test_recipe_stability.py)
from stability_catalogs import CATALOGS, StabilityCatalog, band_names, write_catalog

from geodino.callbacks import CollapseGuard, KNNMonitor
from geodino.datamodules import GeoDINODataModule
from geodino.tasks import DINOv2Task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
FULL_SIZE_CONFIG = CONFIGS / "sentinel2.yaml"
RECIPES = ("demo", "configs", "defaults")


@dataclass(frozen=True)
class Size:
    """Model, data and guard sizes of a matrix run."""

    model_kwargs: dict[str, Any]
    heads: dict[str, int]
    chip_size: int
    batch_size: int
    multicrop: dict[str, Any]
    catalog: dict[str, int]
    guard: dict[str, int]
    statistics_chips: int


SIZES = {
    # the demo's ViT, heads, chips and batch; the guard's defaults
    "demo": Size(
        {"img_size": 56, "embed_dim": 64, "depth": 3, "num_heads": 2},
        {"head_out_dim": 1024, "head_hidden_dim": 512, "head_bottleneck_dim": 128},
        64,
        32,
        {"global_crops_size": 56, "local_crops_size": 28, "local_crops_number": 4},
        {"scenes": 3, "grid": 8, "tile": 64, "chip": 56, "chips_per_class": 24},
        {},
        128,
    ),
    # seconds per run on a CPU: a smoke test of the matrix and of the guard
    "ci": Size(
        {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
        {"head_out_dim": 32, "head_hidden_dim": 32, "head_bottleneck_dim": 16, "head_nlayers": 2},
        32,
        8,
        {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2},
        {"scenes": 1, "grid": 4, "tile": 32, "chip": 28, "chips_per_class": 10},
        {"check_every_n_steps": 5, "patience": 3, "min_step": 10},
        16,
    ),
}


def recipe(name: str, size: Size, in_chans: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Task and data-module arguments of a recipe at a size.

    Args:
        name: ``demo``, ``configs`` or ``defaults``.
        size: the size.
        in_chans: the catalog's band count.

    Returns:
        (task arguments, data-module arguments other than the dataset).
    """
    if name == "demo":
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        task = dict(config["model"]["init_args"])
        data = config["data"]["init_args"]
        multicrop = {**data["multicrop"], **size.multicrop}
        # the demo keeps its LayerScale and the rest of its model settings
        task["model_kwargs"] = {**task["model_kwargs"], **size.model_kwargs}
    elif name == "configs":
        task = dict(yaml.safe_load(FULL_SIZE_CONFIG.read_text())["model"]["init_args"])
        # the config's own model settings (LayerScale, drop path) at the size's dimensions
        task["model_kwargs"] = {**task["model_kwargs"], **size.model_kwargs}
        multicrop = dict(size.multicrop)
    elif name == "defaults":
        task, multicrop = {"model": "vit_small_patch14_reg4_dinov2"}, dict(size.multicrop)
        task["model_kwargs"] = dict(size.model_kwargs)
    else:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(RECIPES)}.")
    task.update(size.heads, in_chans=in_chans)
    for key in ("checkpoint_every_n_steps", "keep_last_k"):
        task.pop(key, None)
    data = {
        "chip_size": size.chip_size,
        "batch_size": size.batch_size,
        "statistics_chips": size.statistics_chips,
        "multicrop": multicrop,
    }
    return task, data


class Snapshots(Callback):
    """Records the collapse figures and the teacher's k-NN accuracy at given steps."""

    def __init__(self, steps: list[int], monitor: KNNMonitor, guard: CollapseGuard) -> None:
        """Remember the steps and the callbacks that score and judge."""
        self.steps, self.monitor, self.guard = set(steps), monitor, guard
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Take a snapshot at the listed steps."""
        step = trainer.global_step
        if step not in self.steps or any(r["step"] == step for r in self.rows):
            return
        metrics = trainer.callback_metrics
        k = pl_module.hparams["head_out_dim"]
        collapsed = self.guard.collapsed_at
        self.rows.append(
            {
                "step": step,
                "entropy_ratio": float(metrics["train/teacher_entropy"]) / math.log(k),
                "feature_std": float(metrics["train/teacher_feature_std"]),
                "knn_pretrained": self.monitor.evaluate(trainer, pl_module),
                "knn_random_init": self.monitor.random_init_accuracy,
                "guard": self.guard.verdict if collapsed is None else f"collapsed at {collapsed}",
            }
        )
        logging.getLogger(__name__).info("snapshot %s", self.rows[-1])


def run_one(
    catalog: str,
    recipe_name: str,
    steps: list[int],
    seed: int,
    size: Size,
    root: Path,
    overrides: dict[str, Any] | None = None,
    multicrop: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One pretraining run, with snapshots at ``steps``.

    Args:
        catalog: catalog name.
        recipe_name: recipe name.
        steps: the steps to record (the run lasts the largest).
        seed: seed of the catalog, the model and the chip stream.
        size: the size.
        root: working folder (the catalog is written once per seed under it).
        overrides: task arguments replacing the recipe's.
        multicrop: multi-crop settings replacing the recipe's.

    Returns:
        one row per recorded step.
    """
    folder = root / f"{catalog}-seed{seed}"
    if not (folder / "labelled" / "labels.txt").is_file():
        written = write_catalog(catalog, folder, seed=seed, **size.catalog)
    else:  # written by an earlier run of this seed
        names = band_names(catalog)
        written = StabilityCatalog(catalog, folder / "scenes", folder / "labelled", names)
    task_args, data_args = recipe(recipe_name, size, len(written.band_names))
    task_args.update(overrides or {})
    data_args["multicrop"].update(multicrop or {})
    torch.manual_seed(seed)
    task = DINOv2Task(**task_args)
    datamodule = GeoDINODataModule(written.dataset(), seed=seed, num_workers=0, **data_args)
    monitor = KNNMonitor(
        str(written.labelled), every_n_steps=10**9, k=10, band_names=written.band_names
    )
    guard = CollapseGuard(**size.guard)
    snapshots = Snapshots(steps, monitor, guard)
    trainer = Trainer(
        max_steps=max(steps),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root / "runs",
        callbacks=[monitor, guard, snapshots],
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule)
    seconds = time.perf_counter() - start
    base = {"catalog": catalog, "recipe": recipe_name, "seed": seed, "seconds": round(seconds)}
    if overrides or multicrop:
        base["overrides"] = {
            **(overrides or {}),
            **{f"multicrop.{k}": v for k, v in (multicrop or {}).items()},
        }
    final = guard.verdict
    return [{**base, **row, "final_guard": final} for row in snapshots.rows]


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| catalog | recipe | seed | step | entropy / log K | feature std "
        "| k-NN pretrained | k-NN random init | guard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["recipe"] + "".join(f" {k}={v}" for k, v in r.get("overrides", {}).items())
        lines.append(
            f"| {r['catalog']} | {name} | {r['seed']} | {r['step']} | {r['entropy_ratio']:.3f} "
            f"| {r['feature_std']:.4f} | {r['knn_pretrained']:.3f} | {r['knn_random_init']:.3f} "
            f"| {r['guard']} |"
        )
    return "\n".join(lines)


def _value(text: str) -> Any:
    """A ``--set`` value: YAML scalar (0.1, true, sinkhorn_knopp)."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the matrix and print its table.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        the rows.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalogs", nargs="+", default=list(CATALOGS), choices=CATALOGS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--steps", nargs="+", type=int, default=[300, 1000, 3000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--set", nargs="*", default=[], help="task overrides, key=value")
    parser.add_argument(
        "--multicrop", nargs="*", default=[], help="multi-crop overrides, key=value"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for table.md/rows.json")
    args = parser.parse_args(argv)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    multicrop = {k: _value(v) for k, v in (item.split("=", 1) for item in args.multicrop)}
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        for catalog in args.catalogs:
            for name in args.recipes:
                for seed in args.seeds:
                    rows += run_one(
                        catalog,
                        name,
                        sorted(args.steps),
                        seed,
                        SIZES[args.size],
                        root,
                        overrides,
                        multicrop,
                    )
                    logging.getLogger(__name__).info("%s", table(rows[-len(args.steps) :]))
    text = table(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(text + "\n")
        (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
