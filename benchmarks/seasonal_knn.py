"""k-NN on a seasonal task: a time-series pretrained model against a single-date model.

The seasonal catalog (``geodino.demo.series``) holds parcels whose class is their number of
growing seasons per year (1, 2 or 3) at a random phase: on any single date every class has the
same distribution of spectra, only the trajectory over the year tells them apart. Both models
get the same recipe (configs/s2_series.yaml, sizes and steps from the command line), the same
number of steps and the same batch size on the chips of the training parcels:

- ``series``: a FusionViT on (T, C, H, W) series of the 8 dates (day-of-year embedding, the
  config's temporal layer, attention pool over the dates), pretrained through the
  time-series multi-crop;
- ``series_mean``: the same with the mean pool;
- ``single``: a timm ViT on single-date chips (every date of every training chip is a sample).

The scenes are read once with rasterio and training chips cut from them in memory, so the CPU
time goes to the steps. The teacher's CLS features of one chip per held-out parcel are then
classified by k-NN against one chip per training parcel; the single-date model is evaluated
on each date (mean, min and max over the dates) and, as a trajectory baseline beyond the
single-date setting, on its features of all dates concatenated. Random initialisation of each
architecture is evaluated beside it.

    python benchmarks/seasonal_knn.py --steps 600 --out /tmp/seasonal_knn --seed 1
    python benchmarks/seasonal_knn.py --steps 2 --scene-size 128 --pool 32   # smoke test

The JSON written to OUT/seasonal_knn.json holds every accuracy, the settings and the times:
the whole fit and the median wall and CPU seconds of a step (from one step's end to the next:
loading, multi-crop and the step). Torch runs on ``--threads`` threads, one by default: on a
CPU shared with other jobs, a second thread's spin-waits at every parallel region cost far
more than it gains (10 s a step against 0.1 s, docs/time-series.md).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "s2_series.yaml"
RUNS = ("series", "series_mean", "single")


class StepTimer(Callback):
    """Wall and CPU seconds from one step's end to the next: loading, multi-crop and step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_train_batch_end(self, *_: Any) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now

    def seconds(self) -> dict[str, float]:
        """Median wall and CPU seconds per step (the first step, warm-up, not counted)."""
        if not self.wall:
            return {"step_wall_seconds": float("nan"), "step_cpu_seconds": float("nan")}
        return {
            "step_wall_seconds": round(float(np.median(self.wall)), 4),
            "step_cpu_seconds": round(float(np.median(self.cpu)), 4),
        }


class ChipPool(torch.utils.data.Dataset):
    """Training chips (or series) held in memory, with the band metadata the data modules read."""

    def __init__(self, images: Tensor, band_names: list[str], doy: Tensor | None) -> None:
        self.images = images
        self.band_names = band_names
        self.band_kinds = ["optical"] * len(band_names)
        self.doy = doy
        if doy is not None:
            self.band_groups = {"s2": len(band_names)}
        self.nodata = float("nan")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = {"image": self.images[index]}
        if self.doy is not None:
            sample["doy"] = self.doy
        return sample


def read_scenes(catalog: Any) -> tuple[Tensor, Tensor, list[str]]:
    """Every S2 date of the scene: (T, C, H, W) float32, (T,) days of year, band names."""
    scenes, names = [], []
    for path in sorted(catalog.s2.glob("S2_*.tif")):
        with rasterio.open(path) as src:
            scenes.append(src.read().astype(np.float32))
            names = list(src.descriptions)
    doy = torch.tensor([d.timetuple().tm_yday for d in catalog.dates])
    return torch.from_numpy(np.stack(scenes)), doy, names


def training_pool(scenes: Tensor, parcels: Any, chips: int, size: int, seed: int) -> Tensor:
    """``chips`` series of ``size`` px at random places of the training parcels' rows/cols."""
    rng = np.random.default_rng(seed)
    height, width = scenes.shape[-2:]
    train = parcels[parcels["split"] == "train"]
    out = []
    for _ in range(chips):
        row, col = train.iloc[rng.integers(len(train))][["row", "col"]]
        parcel = int(parcels.attrs["parcel_size"])
        top = int(
            np.clip(row * parcel + rng.integers(-size // 2, parcel - size // 2), 0, height - size)
        )
        left = int(
            np.clip(col * parcel + rng.integers(-size // 2, parcel - size // 2), 0, width - size)
        )
        out.append(scenes[..., top : top + size, left : left + size])
    return torch.stack(out)


def labelled_chips(scenes: Tensor, parcels: Any, size: int) -> dict[str, tuple[Tensor, Tensor]]:
    """The centre chip of each parcel (all dates) and its class, per split."""
    parcel = int(parcels.attrs["parcel_size"])
    offset = (parcel - size) // 2
    out = {}
    for split in ("train", "val"):
        part = parcels[parcels["split"] == split]
        images = [
            scenes[
                ...,
                r * parcel + offset : r * parcel + offset + size,
                c * parcel + offset : c * parcel + offset + size,
            ]
            for r, c in zip(part["row"], part["col"], strict=True)
        ]
        out[split] = (torch.stack(images), torch.tensor(part["label"].to_numpy()))
    return out


def train(
    run: str, pool: Tensor, doy: Tensor, names: list[str], args: argparse.Namespace
) -> tuple[Any, Any, float, dict[str, float]]:
    """Pretrain one run on the pooled chips.

    Returns the task, the data module, the seconds of the whole fit and the median seconds
    per step.
    """
    from lightning.pytorch import Trainer, seed_everything

    from geodino.datamodules import FolderDINODataModule
    from geodino.tasks import DINOv2Task

    config = yaml.safe_load(CONFIG.read_text())
    model_args = dict(config["model"]["init_args"])
    data_args = dict(config["data"]["init_args"])
    model_args["model_kwargs"] = {
        **model_args["model_kwargs"],
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.heads,
    }
    model_args["checkpoint_every_n_steps"] = 10**9
    model_args["head_out_dim"] = args.head_out_dim
    multicrop = {**data_args["multicrop"], "local_crops_number": args.local_crops}
    if run == "single":
        for key in ("modalities", "fusion", "fusion_kwargs"):
            model_args.pop(key, None)
        dataset = ChipPool(pool.flatten(0, 1), names, None)
    else:
        pool_kind = "attention" if run == "series" else "mean"
        model_args["fusion_kwargs"] = {**model_args["fusion_kwargs"], "temporal_pool": pool_kind}
        if args.temporal_layers is not None:
            model_args["fusion_kwargs"]["temporal_layers"] = args.temporal_layers
        dataset = ChipPool(pool, names, doy)
    seed_everything(args.seed, workers=True)
    datamodule = FolderDINODataModule(
        dataset,
        batch_size=args.batch_size,
        seed=args.seed,
        statistics_chips=args.statistics_chips,
        multicrop=multicrop,
    )
    datamodule.setup("fit")  # band statistics, outside the timed steps
    task = DINOv2Task(**model_args)
    timer = StepTimer()
    trainer = Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(args.out / run),
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule)
    return task, datamodule, time.perf_counter() - start, timer.seconds()


def knn_scores(
    model: nn.Module,
    chips: dict[str, tuple[Tensor, Tensor]],
    doy: Tensor,
    datamodule: Any,
    series: bool,
    k: int,
) -> dict[str, float]:
    """k-NN accuracies of a backbone's CLS features on the held-out parcels."""
    from geodino.evaluation import extract_features, knn_accuracy
    from geodino.transforms.normalize import Normalize

    normalize = Normalize.from_statistics(datamodule.statistics)
    normalize.nodata = float("nan")

    def transform(x: Tensor) -> Tensor:
        return normalize(normalize.fill_nodata(x))

    def accuracy(features: dict[str, Tensor]) -> float:
        return knn_accuracy(
            features["train"], chips["train"][1], features["val"], chips["val"][1], k=k
        )

    if series:
        features = {
            split: extract_features(
                model, images, transform, doy=doy.expand(len(images), -1).contiguous()
            )
            for split, (images, _) in chips.items()
        }
        return {"": accuracy(features)}
    per_date = [
        {
            split: extract_features(model, images[:, t], transform)
            for split, (images, _) in chips.items()
        }
        for t in range(len(doy))
    ]
    scores = [accuracy(f) for f in per_date]
    concatenated = {
        split: torch.cat([f[split] for f in per_date], dim=1) for split in ("train", "val")
    }
    return {
        "": float(np.mean(scores)),
        "_date_min": min(scores),
        "_date_max": max(scores),
        "_dates_concatenated": accuracy(concatenated),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--local-crops", type=int, default=2)
    parser.add_argument("--head-out-dim", type=int, default=1024)
    parser.add_argument("--temporal-layers", type=int, help="default: the config's")
    parser.add_argument("--statistics-chips", type=int, default=64)
    parser.add_argument("--pool", type=int, default=512, help="training series cut once")
    parser.add_argument("--scene-size", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="of the training (not the catalog)")
    # one thread: on a shared CPU a second thread's spin-waits cost far more than it gains
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--out", type=Path, default=Path("seasonal_knn"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import geopandas as gpd

    from geodino.demo.series import write_series_catalog
    from geodino.models import FusionViT, build_backbone

    args.out.mkdir(parents=True, exist_ok=True)
    parcel_size = 32
    catalog = write_series_catalog(
        args.out / "data", seed=0, scene_size=args.scene_size, parcel_size=parcel_size
    )
    scenes, doy, names = read_scenes(catalog)
    parcels = gpd.read_file(catalog.parcels)
    side = args.scene_size // parcel_size
    parcels["row"], parcels["col"] = np.divmod(np.arange(len(parcels)), side)
    parcels.attrs["parcel_size"] = parcel_size
    config = yaml.safe_load(CONFIG.read_text())
    size = config["data"]["init_args"]["multicrop"]["global_crops_size"]
    chip = config["data"]["init_args"]["chip_size"]
    chips = labelled_chips(scenes, parcels, size)
    pool = training_pool(scenes, parcels, args.pool, chip, seed=1)
    result: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dates": doy.tolist(),
        "train_parcels": len(chips["train"][1]),
        "test_parcels": len(chips["val"][1]),
        "runs": {},
    }
    path = args.out / "seasonal_knn.json"
    for run in args.runs:
        task, datamodule, seconds, per_step = train(run, pool, doy, names, args)
        hp = task.hparams
        torch.manual_seed(args.seed)
        if hp.get("modalities"):
            random_init: nn.Module = FusionViT(
                hp["model"],
                hp["modalities"],
                hp["fusion"],
                **(hp["fusion_kwargs"] or {}),
                **hp["model_kwargs"],
            )
        else:
            random_init = build_backbone(hp["model"], hp["in_chans"], **hp["model_kwargs"])
        entry: dict[str, Any] = {
            "train_seconds": round(seconds, 1),
            "steps": args.steps,
            **per_step,
            "final_loss": float(task.trainer.callback_metrics.get("train_loss", float("nan"))),
        }
        series = run != "single"
        for name, model in (("pretrained", task.model), ("random_init", random_init)):
            for suffix, value in knn_scores(model, chips, doy, datamodule, series, args.k).items():
                entry[f"knn_accuracy_{name}{suffix}"] = round(value, 4)
        result["runs"][run] = entry
        print(json.dumps({run: entry}), flush=True)
        path.write_text(json.dumps(result, indent=1))
    print(f"\nk-NN accuracy (k = {args.k}) on {result['test_parcels']} held-out parcels")
    for run, entry in result["runs"].items():
        print(
            f"  {run:12s} pretrained {entry['knn_accuracy_pretrained']:.3f}  random init "
            f"{entry['knn_accuracy_random_init']:.3f}  ({entry['train_seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
