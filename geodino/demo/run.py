"""``geodino demo``: the whole story on the synthetic catalog, pretrained vs random init."""

import json
import logging
from pathlib import Path
from typing import Any

import torch

from geodino.errors import ConfigError

log = logging.getLogger(__name__)

#: The demo config shipped with the sources.
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def evaluate_knn(
    backbone: torch.nn.Module,
    random_backbone: torch.nn.Module,
    data_root: Path,
    statistics: Any,
    chip_size: int,
    k: int = 20,
    images: Any | None = None,
) -> dict[str, Any]:
    """k-NN accuracy of CLS features on the demo land-cover labels, pretrained vs random.

    Chips come from a grid over the AOI: those in ``train`` polygons are the labelled
    neighbours, those in ``val`` polygons are classified.

    Args:
        backbone: the pretrained backbone.
        random_backbone: the same architecture at random initialisation.
        data_root: the demo catalog folder.
        statistics: band statistics used to normalise chips.
        chip_size: chip side in pixels (the backbone's input size).
        k: neighbours in the vote.
        images: TorchGeo dataset to read the chips from, with the bands of ``statistics``
            (default: the catalog's Sentinel-2; e.g. its Sentinel-1, or a
            :class:`~geodino.datasets.PairedDataset` of both for a fusion backbone).

    Returns:
        accuracies and chip counts.
    """
    from geodino.datasets import Sentinel2
    from geodino.demo.catalog import LABEL_NODATA, DemoCatalog, DemoLandCover
    from geodino.evaluation import extract_features, knn_accuracy, read_labelled_chips
    from geodino.samplers import AOISampler
    from geodino.transforms.normalize import Normalize

    catalog = DemoCatalog.load(data_root)
    if images is None:
        images = Sentinel2(catalog.s2)
    labels = DemoLandCover(catalog.labels, crs=images.crs, res=images.res)
    normalize = Normalize.from_statistics(statistics)

    def transform(x: torch.Tensor) -> torch.Tensor:
        normalised: torch.Tensor = normalize(normalize.fill_nodata(x))
        return normalised

    splits = {}
    for split in ("train", "val"):
        sampler = AOISampler(
            images,
            catalog.aoi,
            chip_size,
            stride=chip_size // 2,
            min_coverage=0.9,
            query=f"split == '{split}'",
        )
        splits[split] = read_labelled_chips(images, labels, sampler, LABEL_NODATA, 0.6)
    result: dict[str, Any] = {
        "train_chips": len(splits["train"][1]),
        "test_chips": len(splits["val"][1]),
        "k": k,
    }
    for name, model in (("pretrained", backbone), ("random_init", random_backbone)):
        train = extract_features(model, splits["train"][0], transform)
        test = extract_features(model, splits["val"][0], transform)
        result[f"knn_accuracy_{name}"] = knn_accuracy(
            train, splits["train"][1], test, splits["val"][1], k=k
        )
    return result


def run_demo(out: Path = Path("geodino_demo"), seed: int = 0, max_steps: int | None = None) -> str:
    """Run the demo: catalog, pretraining, k-NN against random init, export, embeddings, maps.

    Writes the demo catalog, pretrains, evaluates against random init, exports the backbone,
    embeds a scene (GeoTIFF and GeoParquet) and draws its PCA and attention maps.

    Args:
        out: folder for the catalog (``out/data``) and the run (``out/runs``).
        seed: seed of the catalog and of training.
        max_steps: training steps (default: the demo config's).

    Returns:
        a short human-readable summary.
    """
    from geodino.config import run_lightning_cli
    from geodino.demo.catalog import write_demo_catalog
    from geodino.models import build_backbone
    from geodino.plotting import plot_chips

    if not DEMO_CONFIG.is_file():
        raise ConfigError(
            f"the demo config {DEMO_CONFIG} is missing: run the demo from a geodino source "
            "checkout (`make demo`)."
        )
    out = Path(out)
    data = out / "data"
    catalog = write_demo_catalog(data, seed=seed)
    args = [
        "fit",
        "--config",
        str(DEMO_CONFIG),
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={out / 'runs'}",
        f"--data.init_args.dataset.init_args.paths={data}",
        f"--data.init_args.aoi={catalog.aoi}",
        f"--data.init_args.seed={seed}",
    ]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    cli = run_lightning_cli(args)
    trainer, task, datamodule = cli.trainer, cli.model, cli.datamodule
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    batch = next(iter(datamodule.train_dataloader()))
    names = datamodule.band_names
    rgb = [names.index(b) for b in ("B04", "B03", "B02")]
    chips_png = plot_chips(batch["image"][:16].float(), rgb, run_dir / "chips.png")

    hp = task.hparams
    # timm initialises weights from torch's default generator: seed it for this build only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_backbone = build_backbone(hp["model"], hp["in_chans"], **(hp["model_kwargs"] or {}))
    knn = evaluate_knn(
        task.model,
        random_backbone,
        data,
        datamodule.statistics,
        datamodule.multicrop.global_crops_size,
    )
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["knn"] = knn
    metrics_path.write_text(json.dumps(metrics, indent=1))
    callback = trainer.checkpoint_callback
    checkpoint = callback.last_model_path or callback.best_model_path if callback else ""
    if not checkpoint or not Path(checkpoint).is_file():
        # runs shorter than the checkpoint interval (e.g. --max_steps 5) end without one
        checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
        trainer.save_checkpoint(checkpoint)
    files = downstream(checkpoint, catalog.s2, run_dir, datamodule.multicrop.global_crops_size)
    rows = {
        "catalog": catalog.root,
        "checkpoint": checkpoint,
        "curves": run_dir / "training_curves.png",
        "chips": chips_png,
        "metrics": metrics_path,
        **files,
    }
    return "\n".join(
        [
            f"geodino demo finished in {run_dir}",
            *(f"  {kind:<14}{path}" for kind, path in rows.items()),
            f"  k-NN (k={knn['k']}) on {knn['test_chips']} held-out chips: "
            f"pretrained {knn['knn_accuracy_pretrained']:.3f} vs random init "
            f"{knn['knn_accuracy_random_init']:.3f}",
        ]
    )


def downstream(
    checkpoint: str | Path, scenes: Path, run_dir: Path, chip_size: int
) -> dict[str, Path]:
    """Export the backbone, embed one demo scene and draw its maps.

    Args:
        checkpoint: the trained run's checkpoint.
        scenes: the demo's Sentinel-2 folder (its first scene is embedded).
        run_dir: the run folder to write into.
        chip_size: window side in pixels (the training crop size).

    Returns:
        the written files by kind.
    """
    from geodino.export import export_backbone
    from geodino.inference import embed, write_maps

    export_dir = run_dir / "export"
    export_backbone(checkpoint, export_dir)
    scene = sorted(scenes.glob("*.tif"))[0]
    (tif,) = embed(
        export_dir,
        [scene],
        run_dir / "embeddings.tif",
        chip_size=chip_size,
        overwrite=True,
        progress=False,
    )
    (table,) = embed(
        export_dir,
        [scene],
        run_dir / "embeddings.parquet",
        chip_size=chip_size,
        overwrite=True,
        progress=False,
    )
    maps = write_maps(export_dir, scene, run_dir / "maps", chip_size=chip_size, embeddings=tif)
    return {
        "export": export_dir,
        "embeddings": tif,
        "chip table": table,
        "PCA map": maps["pca_png"],
        "PCA GeoTIFF": maps["pca_tif"],
        "attention": maps["attention_png"],
    }
