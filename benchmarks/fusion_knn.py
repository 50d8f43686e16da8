"""k-NN on the demo labels: S1+S2 fusion (each mode) against S2 alone and S1 alone.

Every run pretrains the same ViT with the same recipe (configs/s1s2_fusion.yaml, sizes and
steps from the command line) for the same number of steps on the same training chips of the
demo catalog: Sentinel-2 alone, Sentinel-1 alone, and S2+S1 pairs fused early, linearly and by
cross-attention. The training chips are read once from the catalog's pairs (``--pool`` chips
of the fusion config's stream) and held in memory, so every run sees the same pixels and the
CPU time goes to the steps; single-sensor runs take their bands of the same chips. The
teacher's CLS features are then classified by k-NN on held-out chips
(``geodino.demo.evaluate_knn``: labelled chips of the train polygons vote for chips of the
validation polygons), next to the same architecture at random initialisation. Fusion models
are also evaluated with S2 alone and S1 alone (missing-modality inference).

    python benchmarks/fusion_knn.py --steps 300 --out /tmp/fusion_knn
    python benchmarks/fusion_knn.py --steps 2 --runs s2 early   # smoke test

The JSON written to OUT/fusion_knn.json holds every accuracy, the settings and the times.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "s1s2_fusion.yaml"
RUNS = ("s2", "s1", "early", "linear", "xattn")
#: Bands of each run among the 15 of the pairs (13 S2, then VV, VH).
BANDS = {
    "s2": slice(0, 13),
    "s1": slice(13, 15),
    "early": slice(0, 15),
    "linear": slice(0, 15),
    "xattn": slice(0, 15),
}


class ModalitySubset(nn.Module):
    """A fusion backbone fed a subset of the modalities of stacked images.

    It is the fusion model's encoder (``geodino.models.Encoder``) in everything but the
    tokens, which see only the kept modalities.
    """

    def __init__(self, model: nn.Module, keep: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keep = keep

    def forward_tokens(
        self, images: Tensor, masks: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        from geodino.models.fusion import split_modalities

        parts = split_modalities(images, self.model.modalities)
        return self.model.forward_tokens({m: parts[m] for m in self.keep}, masks, mask_token)

    # the rest of the encoder interface is the fusion model's (isinstance against a runtime
    # protocol looks members up statically, so they are spelled out)
    patch_size = property(lambda self: self.model.patch_size)
    embed_dim = property(lambda self: self.model.embed_dim)
    num_prefix_tokens = property(lambda self: self.model.num_prefix_tokens)
    in_chans = property(lambda self: self.model.in_chans)
    band_names = property(lambda self: self.model.band_names)
    modalities = property(lambda self: self.model.modalities)
    depth = property(lambda self: self.model.depth)

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.split_tokens(tokens)

    def block_maps(self, images: Tensor, indices: Any) -> list[Tensor]:
        return self.model.block_maps(images, indices)

    def layer_id(self, name: str) -> int:
        return self.model.layer_id(name)

    def architecture(self) -> Any:
        return self.model.architecture()


def datasets(root: Path, run: str) -> Any:
    from geodino.datasets import PairedDataset
    from geodino.demo.catalog import DemoSentinel1, DemoSentinel2

    if run == "s2":
        return DemoSentinel2(root)
    if run == "s1":
        return DemoSentinel1(root)
    return PairedDataset({"s2": DemoSentinel2(root), "s1": DemoSentinel1(root)})


class ChipPool(torch.utils.data.Dataset):
    """Training chips held in memory, with the band metadata the data modules read."""

    def __init__(
        self,
        images: Tensor,
        band_names: list[str],
        band_kinds: list[str],
        band_groups: dict[str, int] | None,
    ) -> None:
        self.images = images
        self.band_names = band_names
        self.band_kinds = band_kinds
        if band_groups is not None:
            self.band_groups = band_groups
        self.nodata = float("nan")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index]}


def read_pool(catalog: Any, config: dict[str, Any], chips: int) -> tuple[Tensor, Any]:
    """The first ``chips`` S2+S1 training chips of the fusion config's stream."""
    from geodino.datamodules import GeoDINODataModule

    data_args = dict(config["data"]["init_args"])
    pairs = datasets(catalog.root, "early")
    module = GeoDINODataModule(
        pairs,
        aoi=str(catalog.aoi),
        aoi_query=data_args["aoi_query"],
        chip_size=data_args["chip_size"],
        min_coverage=data_args["min_coverage"],
        max_nodata=data_args["max_nodata"],
    )
    module.setup_draws()
    return torch.stack([module.train_draw(i)["image"] for i in range(chips)]), pairs


def train(run: str, pool: Tensor, pairs: Any, args: argparse.Namespace) -> tuple[Any, Any, float]:
    """Pretrain one run on the pooled chips; return the task, data module and step seconds."""
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
    bands = BANDS[run]
    names, kinds = pairs.band_names[bands], pairs.band_kinds[bands]
    groups = None
    if run in ("s2", "s1"):
        for key in ("modalities", "fusion", "fusion_kwargs", "modality_dropout"):
            model_args.pop(key)
        model_args["in_chans"] = len(names)
        multicrop["preset"] = "optical" if run == "s2" else "sar"
    else:
        model_args["fusion"] = run
        groups = pairs.band_groups
    seed_everything(0, workers=True)
    datamodule = FolderDINODataModule(
        ChipPool(pool[:, bands], names, kinds, groups),
        batch_size=args.batch_size,
        seed=0,
        statistics_chips=args.statistics_chips,
        multicrop=multicrop,
    )
    datamodule.setup("fit")  # band statistics, outside the timed steps
    task = DINOv2Task(**model_args)
    trainer = Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(args.out / run),
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule)
    return task, datamodule, time.perf_counter() - start


def labelled_chips(catalog: Any, chip_size: int) -> dict[str, tuple[Tensor, Tensor]]:
    """S2+S1 chips (15 bands) and majority labels of the grid chips of the train/val AOIs."""
    from geodino.demo.catalog import LABEL_NODATA, DemoLandCover
    from geodino.evaluation import read_labelled_chips
    from geodino.samplers import AOISampler

    pairs = datasets(catalog.root, "early")
    labels = DemoLandCover(catalog.labels, crs=pairs.crs, res=pairs.res)
    out = {}
    for split in ("train", "val"):
        sampler = AOISampler(
            pairs,
            catalog.aoi,
            chip_size,
            stride=chip_size // 2,
            min_coverage=0.9,
            query=f"split == '{split}'",
        )
        out[split] = read_labelled_chips(pairs, labels, sampler, LABEL_NODATA, 0.6)
    return out


def knn(
    model: nn.Module,
    chips: dict[str, tuple[Tensor, Tensor]],
    run: str,
    datamodule: Any,
    k: int = 20,
) -> float:
    """k-NN accuracy of a backbone's CLS features on the held-out chips (DINO protocol)."""
    from geodino.evaluation import extract_features, knn_accuracy
    from geodino.transforms.normalize import Normalize

    bands = BANDS[run]
    normalize = Normalize.from_statistics(datamodule.statistics)
    normalize.nodata = float("nan")

    def transform(x: Tensor) -> Tensor:
        return normalize(normalize.fill_nodata(x))

    features = {
        split: extract_features(model, images[:, bands], transform)
        for split, (images, _) in chips.items()
    }
    return knn_accuracy(features["train"], chips["train"][1], features["val"], chips["val"][1], k=k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--local-crops", type=int, default=4)
    parser.add_argument("--head-out-dim", type=int, default=2048)
    parser.add_argument("--statistics-chips", type=int, default=128)
    parser.add_argument(
        "--pool", type=int, default=512, help="training chips read once and shared by every run"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--chip-size", type=int, default=56, help="side of the k-NN chips (the global crop size)"
    )
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument(
        "--data", type=Path, default=None, help="demo catalog (default: written to OUT/data)"
    )
    parser.add_argument("--out", type=Path, default=Path("fusion_knn"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from geodino.demo.catalog import DemoCatalog, write_demo_catalog
    from geodino.models import FusionViT, build_backbone

    args.out.mkdir(parents=True, exist_ok=True)
    catalog = (
        DemoCatalog.load(args.data) if args.data else write_demo_catalog(args.out / "data", seed=0)
    )
    start = time.perf_counter()
    chips = labelled_chips(catalog, args.chip_size)
    pool, pairs = read_pool(catalog, yaml.safe_load(CONFIG.read_text()), args.pool)
    print(
        f"read {args.pool} training chips and {sum(len(c[1]) for c in chips.values())} "
        f"labelled chips in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    result: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": {},
    }
    path = args.out / "fusion_knn.json"
    for run in args.runs:
        task, datamodule, seconds = train(run, pool, pairs, args)
        hp = task.hparams
        torch.manual_seed(0)
        if hp.get("modalities"):
            random_init = FusionViT(
                hp["model"],
                hp["modalities"],
                hp["fusion"],
                **(hp["fusion_kwargs"] or {}),
                **hp["model_kwargs"],
            )
        else:
            random_init = build_backbone(hp["model"], hp["in_chans"], **hp["model_kwargs"])
        entry = {
            "train_seconds": round(seconds, 1),
            "steps": args.steps,
            "seconds_per_step": round(seconds / max(args.steps, 1), 2),
            "final_loss": float(task.trainer.callback_metrics.get("train_loss", float("nan"))),
            "train_chips": len(chips["train"][1]),
            "test_chips": len(chips["val"][1]),
        }
        evaluated = {"": (task.model, random_init)}
        if hp.get("modalities"):
            for keep in ("s2", "s1"):
                evaluated[f"_{keep}_only"] = (
                    ModalitySubset(task.model, [keep]),
                    ModalitySubset(random_init, [keep]),
                )
        for suffix, (pretrained, random_model) in evaluated.items():
            for name, model in (("pretrained", pretrained), ("random_init", random_model)):
                entry[f"knn_accuracy_{name}{suffix}"] = knn(model, chips, run, datamodule)
        result["runs"][run] = entry
        print(json.dumps({run: entry}), flush=True)
        path.write_text(json.dumps(result, indent=1))

    print(f"\nk-NN accuracy on held-out chips after {args.steps} steps (random init beside it)")
    for run, entry in result["runs"].items():
        line = (
            f"  {run:7s} pretrained {entry['knn_accuracy_pretrained']:.3f}  random init "
            f"{entry['knn_accuracy_random_init']:.3f}  ({entry['train_seconds']:.0f} s)"
        )
        if "knn_accuracy_pretrained_s2_only" in entry:
            line += (
                f"  S2 only {entry['knn_accuracy_pretrained_s2_only']:.3f}  S1 only "
                f"{entry['knn_accuracy_pretrained_s1_only']:.3f}"
            )
        print(line)
    runs = result["runs"]
    for single in ("s2", "s1"):
        for mode in ("early", "linear", "xattn"):
            if single in runs and mode in runs:
                gain = (
                    runs[mode]["knn_accuracy_pretrained"] - runs[single]["knn_accuracy_pretrained"]
                )
                print(f"  {mode} - {single} alone: {gain:+.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
