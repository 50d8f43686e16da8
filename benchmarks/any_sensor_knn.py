"""k-NN on the demo labels: one wavelength-aware model for all sensors vs one model per sensor.

Part (a) of issue 15's evaluation. On the demo catalog (Sentinel-2, Sentinel-1 and the 8-band
WorldView-3-like scenes derived from its S2), after the same CPU budget in optimiser steps:

- ``mixed``: one Panopticon backbone (:class:`~geodino.models.PanopticonViT`) pretrained on
  all three sources (:class:`~geodino.datamodules.MixedGeoDataModule`, one source a step
  drawn with ``--weights``, default equal as ``configs/any_sensor.yaml``, spectral
  multi-crop with subsets that other sensors record (``--sensor-subsets``) and a full-band
  teacher (``--no-teacher-all-bands``: the teacher's crops hide the student's bands), DINO
  heads per source: ``--source-heads``) for ``3 x --steps`` steps
  (``--mixed-steps``: another count, e.g. to equalise CPU seconds instead; ``--mixed-arch
  dofa``: a DOFA backbone);
- ``fixed_s2``, ``fixed_s1``, ``fixed_wv3``: one timm DINOv2 ViT of the same width and depth
  per source, ``--steps`` steps each (together the mixed model's step count).

Each teacher's CLS features are classified by k-NN (labelled chips of the train polygons vote
for chips of the validation polygons, as ``geodino.demo.evaluate_knn`` does) on each source and
on band subsets: S2 RGB+NIR, S2 without its SWIR bands (B10-B12), S1 VV alone, S2 RGB, four
scattered S2 bands and WV3 RGB+NIR. A fixed-band
model cannot take a subset; it is scored on it with the missing bands filled with their mean
(0 after normalisation), the usual workaround, and marked ``filled``. Every model is scored
at its random initialisation too, and every run reports what its collapse guard saw. All
runs use the demo recipe that holds (docs/recipe.md: KoLeo 0.1, LayerScale 1.0, teacher
temperature 0.04); the mixed model's channel attention has 16 heads, twice the ViT's width,
each starting on a band of its own.

    python benchmarks/any_sensor_knn.py --seed 40 --out /tmp/any_sensor_knn   # 1,000 steps
    python benchmarks/any_sensor_knn.py --steps 300 --seed 1 --mixed-only --source-heads 1
    python benchmarks/any_sensor_knn.py --steps 2 --scene-size 128   # smoke test

Every model is scored on the same labelled chips (``--eval-stride``); one seed moves the
mixed model's k-NN by up to 0.08 and its difference to a fixed model by up to 0.1, so
compare settings over several ``--seed``. Training times are CPU seconds of one thread.

Writes OUT/any_sensor_knn.json (every accuracy, times, settings) and prints a Markdown table.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from geodino.callbacks import CollapseGuard
from geodino.datamodules import DINODataModule, GeoDINODataModule, MixedGeoDataModule
from geodino.demo import DemoLandCover, DemoSentinel1, DemoSentinel2, write_demo_catalog
from geodino.demo.catalog import LABEL_NODATA, DemoCatalog
from geodino.demo.eightband import EIGHT_BANDS, DemoWorldView3
from geodino.evaluation import extract_features, knn_accuracy, read_labelled_chips
from geodino.models import SpectralViT, create_encoder
from geodino.samplers import AOISampler
from geodino.tasks import DINOv2Task
from geodino.transforms.normalize import BandStatistics, Normalize

SOURCES = ("s2", "s1", "wv3")
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
#: Evaluation sets: (source whose chips are read, bands kept).
SETS: dict[str, tuple[str, list[str]]] = {
    "S2 (13 bands)": ("s2", S2),
    "S1 (VV, VH)": ("s1", ["VV", "VH"]),
    "WV3 (8 bands)": ("wv3", list(EIGHT_BANDS)),
    "S2 RGB+NIR": ("s2", ["B04", "B03", "B02", "B08"]),
    "S2 without SWIR": ("s2", [b for b in S2 if b not in ("B10", "B11", "B12")]),
    "S1 VV alone": ("s1", ["VV"]),
    "S2 RGB": ("s2", ["B04", "B03", "B02"]),
    "S2 B03 B07 B8A B12": ("s2", ["B03", "B07", "B8A", "B12"]),
    "WV3 RGB+NIR": ("wv3", ["red", "green", "blue", "nir1"]),
}


def datasets(root: Path) -> dict[str, Any]:
    return {"s2": DemoSentinel2(root), "s1": DemoSentinel1(root), "wv3": DemoWorldView3(root)}


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Task arguments shared by every run: the demo recipe that holds (docs/recipe.md) at
    benchmark size, KoLeo 0.1 and a fixed teacher temperature of 0.04 (LayerScale 1.0 in
    :func:`trunk`)."""
    return {
        "head_out_dim": 256,
        "head_hidden_dim": 128,
        "head_bottleneck_dim": 64,
        "koleo_loss_weight": 0.1,
        "base_lr": 0.0015,
        "lr_reference_batch": 256,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.04,
        "freeze_last_layer_fraction": 0.02,
        "momentum_teacher": 0.98,
        "layerwise_decay": 1.0,
        "patch_embed_lr_mult": args.patch_embed_lr_mult,
    }


def trunk(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "img_size": args.crop,
        "embed_dim": args.width,
        "depth": args.depth,
        "num_heads": 2,
        "init_values": 1.0,
    }


def data_args(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    return {
        "aoi": root / "aoi.gpkg",
        "aoi_query": "split == 'train'",
        "chip_size": args.crop + 4,
        "min_coverage": 0.9,
        "max_nodata": 0.1,
        "batch_size": args.batch,
        "statistics_chips": 64,
        "seed": args.seed,
        "multicrop": {
            "global_crops_size": args.crop,
            "local_crops_size": args.crop // 2,
            "local_crops_number": 2,
            "blur_p": [0.5, 0.1, 0.2],
            "blur_sigma": [0.1, 1.0],
        },
    }


def train(task: DINOv2Task, data: DINODataModule, steps: int) -> tuple[float, dict[str, Any]]:
    """Fit a task; its CPU seconds (one thread, no loader workers: the whole run) and what
    its collapse guard saw."""
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.process_time()
    trainer.fit(task, data)
    took = time.process_time() - start
    guard = next(c for c in trainer.callbacks if isinstance(c, CollapseGuard))  # type: ignore[attr-defined]
    late = [c for c in guard.checks if c.step > task.warmup_steps]
    return took, {
        "verdict": guard.verdict,
        "max_entropy_ratio_after_warmup": max((c.entropy_ratio for c in late), default=None),
        "last_entropy_ratio": guard.checks[-1].entropy_ratio if guard.checks else None,
        "last_feature_std": guard.checks[-1].feature_std if guard.checks else None,
    }


def labelled(root: Path, dataset: Any, size: int, stride: int) -> dict[str, tuple[Tensor, Tensor]]:
    catalog = DemoCatalog.load(root)
    labels = DemoLandCover(catalog.labels, crs=dataset.crs, res=dataset.res)
    out = {}
    for split in ("train", "val"):
        sampler = AOISampler(
            dataset,
            catalog.aoi,
            size,
            stride=stride,
            min_coverage=0.9,
            query=f"split == '{split}'",
        )
        out[split] = read_labelled_chips(dataset, labels, sampler, LABEL_NODATA, 0.6)
    return out


def score(
    model: torch.nn.Module,
    statistics: BandStatistics,
    model_bands: list[str],
    chips: dict[str, tuple[Tensor, Tensor]],
    chip_bands: list[str],
    bands: list[str],
) -> tuple[float, bool]:
    """k-NN accuracy of a model on chips restricted to ``bands`` (missing ones mean-filled)."""
    if isinstance(model, SpectralViT):
        model = model.select_bands(bands)
        model_bands = bands
    filled = [b for b in model_bands if b not in bands]
    normalize = Normalize.from_statistics(statistics.select([b for b in model_bands if b in bands]))
    index = [chip_bands.index(b) for b in model_bands if b in bands]

    def transform(x: Tensor) -> Tensor:
        known: Tensor = normalize(normalize.fill_nodata(x[:, index]))
        full = known.new_zeros(x.shape[0], len(model_bands), *x.shape[2:])
        full[:, [model_bands.index(b) for b in model_bands if b in bands]] = known
        return full

    features = {
        split: extract_features(model, images, transform) for split, (images, _) in chips.items()
    }
    accuracy = knn_accuracy(
        features["train"], chips["train"][1], features["val"], chips["val"][1], k=20
    )
    return accuracy, bool(filled)


def padding_cost(args: argparse.Namespace, repeats: int = 5) -> dict[str, float]:
    """CPU seconds of a student step's backbone pass: one-source batches vs padded batches.

    One-source batches hold their source's bands (13, 2 or 8); padded batches hold the union
    of all sources' bands (23) with a band mask hiding the bands a chip lacks, as a mixed
    batch must. Measured as process CPU time on one thread (robust to a busy machine).
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_encoder(
        "panopticon_vitb14",
        23,
        {**trunk(args), "attn_dim": args.width, "attn_heads": 4, "band_ids": [500.0] * 23},
    )
    ids = torch.linspace(440, 2200, 23)
    counts = {"s2": 13, "s1": 2, "wv3": 8}

    def cost(bands: int, mask: Tensor | None) -> float:
        images = torch.randn(args.batch, bands, args.crop, args.crop)
        start = time.process_time()
        for _ in range(repeats):
            model.forward_spectral(images, ids[:bands], mask).sum().backward()
        return (time.process_time() - start) / repeats

    one_source = sum(cost(n, None) for n in counts.values()) / len(counts)
    padded_mask = torch.ones(args.batch, 23, dtype=torch.bool)
    start = 0
    for i, n in enumerate(counts.values()):  # each chip keeps its source's bands
        rows = slice(i * args.batch // 3, (i + 1) * args.batch // 3 if i < 2 else args.batch)
        padded_mask[rows, start : start + n] = False
        start += n
    padded = cost(23, padded_mask)
    return {
        "one_source_batch_s": one_source,
        "padded_batch_s": padded,
        "ratio": padded / one_source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/any_sensor_demo"))
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000, help="steps of each fixed-band model")
    parser.add_argument(
        "--mixed-steps",
        type=int,
        default=None,
        help="steps of the mixed model (default: 3 x --steps, the fixed models' together)",
    )
    parser.add_argument("--crop", type=int, default=28)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument(
        "--attn-dim", type=int, default=96, help="width of the Panopticon channel attention"
    )
    parser.add_argument(
        "--attn-heads", type=int, default=16, help="heads of the Panopticon channel attention"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-stride", type=int, default=7, help="stride of the labelled k-NN chips (px)"
    )
    parser.add_argument(
        "--weights",
        type=float,
        nargs=3,
        default=[1.0, 1.0, 1.0],
        help="S2, S1, WV3 sampling weights of the mixed model's steps",
    )
    parser.add_argument(
        "--teacher-all-bands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the teacher's global crops keep all bands, only the student's draw subsets "
        "(--no-teacher-all-bands: the teacher's hide what the student's copies hide)",
    )
    parser.add_argument("--patch-embed-lr-mult", type=float, default=1.0)
    parser.add_argument(
        "--spectral-subsets", type=float, default=0.5, help="chance that a crop sees a subset"
    )
    parser.add_argument(
        "--sensor-subsets",
        type=float,
        default=0.5,
        help="chance that a subset is what another sensor of the band table records",
    )
    parser.add_argument(
        "--source-heads",
        type=int,
        choices=(1, 3),
        default=3,
        help="DINO heads of the mixed model: 3 gives each source its own, 1 shares one",
    )
    parser.add_argument(
        "--mixed-arch",
        choices=("panopticon", "dofa"),
        default="panopticon",
        help="patch embedding of the mixed model: Panopticon's channel attention or DOFA's "
        "wavelength-generated kernels",
    )
    parser.add_argument(
        "--mixed-kwargs",
        type=json.loads,
        default={},
        help="more model_kwargs of the mixed model, as JSON (e.g. '{\"channel_query_std\": 16}')",
    )
    parser.add_argument("--mixed-only", action="store_true", help="skip the fixed models")
    parser.add_argument("--out", type=Path, default=Path("/tmp/any_sensor_knn"))
    parser.add_argument(
        "--padding-only", action="store_true", help="only measure one-source vs padded batches"
    )
    args = parser.parse_args()
    mixed_steps = args.mixed_steps or 3 * args.steps
    padding = padding_cost(args)
    print(json.dumps({"padding": padding}))
    if args.padding_only:
        return
    root = write_demo_catalog(args.root, seed=0, scene_size=args.scene_size).root
    sources = datasets(root)
    names = {k: list(v.band_names) for k, v in sources.items()}
    models: dict[str, tuple[torch.nn.Module, BandStatistics, list[str]]] = {}
    seconds: dict[str, float] = {}
    guards: dict[str, dict[str, Any]] = {}

    torch.manual_seed(args.seed)
    mixed_data = MixedGeoDataModule(
        [sources[k] for k in SOURCES],
        weights=args.weights,
        teacher_all_bands=args.teacher_all_bands,
        spectral_subsets=args.spectral_subsets,
        sensor_subsets=args.sensor_subsets,
        **data_args(args, root),
    )
    sensors = {"sensors": ["sentinel2", "sentinel1", "worldview3"]}
    if args.mixed_arch == "dofa":
        arch = "dofa_base_patch16_224"
        spectral = {**trunk(args), "patch_size": 14, **sensors}
    else:
        arch = "panopticon_vitb14"
        spectral = {
            **trunk(args),
            "attn_dim": args.attn_dim,
            "attn_heads": args.attn_heads,
            **sensors,
        }
    spectral |= args.mixed_kwargs
    task = DINOv2Task(
        model=arch,
        in_chans=len(mixed_data.band_names),
        band_names=mixed_data.band_names,
        model_kwargs=spectral,
        source_heads=args.source_heads,
        **recipe(args),
    )
    seconds["mixed"], guards["mixed"] = train(task, mixed_data, mixed_steps)
    assert mixed_data.statistics is not None
    models["mixed"] = (task.teacher["backbone"], mixed_data.statistics, mixed_data.band_names)
    torch.manual_seed(args.seed)
    random = create_encoder(
        arch, len(mixed_data.band_names), spectral, band_names=mixed_data.band_names
    )
    models[f"random_init_{args.mixed_arch}"] = (
        random,
        mixed_data.statistics,
        mixed_data.band_names,
    )

    for source in () if args.mixed_only else SOURCES:
        torch.manual_seed(args.seed)
        data = GeoDINODataModule(sources[source], **data_args(args, root))
        task = DINOv2Task(
            model="vit_small_patch14_dinov2",
            in_chans=len(names[source]),
            model_kwargs=trunk(args),
            **recipe(args),
        )
        torch.manual_seed(args.seed)
        random_fixed = create_encoder("vit_small_patch14_dinov2", len(names[source]), trunk(args))
        seconds[f"fixed_{source}"], guards[f"fixed_{source}"] = train(task, data, args.steps)
        assert data.statistics is not None
        models[f"fixed_{source}"] = (task.teacher["backbone"], data.statistics, names[source])
        models[f"random_init_fixed_{source}"] = (random_fixed, data.statistics, names[source])

    chips = {
        source: labelled(root, sources[source], args.crop, args.eval_stride) for source in SOURCES
    }
    results: dict[str, dict[str, Any]] = {}
    for model_name, (model, statistics, model_bands) in models.items():
        results[model_name] = {}
        for set_name, (source, bands) in SETS.items():
            if not set(bands) & set(model_bands):
                results[model_name][set_name] = None
                continue
            accuracy, filled = score(
                model, statistics, model_bands, chips[source], names[source], bands
            )
            results[model_name][set_name] = {"accuracy": accuracy, "filled": filled}

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "cpu_seconds": seconds,
        "collapse_guard": guards,
        "padding": padding,
        "chips": {s: [len(c["train"][1]), len(c["val"][1])] for s, c in chips.items()},
        "knn_accuracy": results,
    }
    (args.out / "any_sensor_knn.json").write_text(json.dumps(report, indent=1))
    header = "| model | steps | CPU s | " + " | ".join(SETS) + " | guard |"
    print(header)
    print("|" + "---|" * (4 + len(SETS)))
    for model_name, row in results.items():
        steps = (
            mixed_steps if model_name == "mixed" else 0 if "random" in model_name else args.steps
        )
        cells = []
        for value in row.values():
            if value is None:
                cells.append("n/a")
            else:
                cells.append(f"{value['accuracy']:.3f}" + (" (filled)" if value["filled"] else ""))
        took = seconds.get(model_name, 0.0)
        guard = guards.get(model_name)
        seen = "" if guard is None else guard["verdict"]
        if guard is not None and guard["max_entropy_ratio_after_warmup"] is not None:
            seen += f" (entropy <= {guard['max_entropy_ratio_after_warmup']:.2f} of log K)"
        print(f"| {model_name} | {steps} | {took:.0f} | " + " | ".join(cells) + f" | {seen} |")


if __name__ == "__main__":
    main()
