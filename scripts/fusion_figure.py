"""Render docs/figures/fusion_pairs.png: paired S2/S1 chips of the demo catalog and k-NN results.

    .venv/bin/python scripts/fusion_figure.py [--knn fusion_knn/fusion_knn.json] [--data DIR]

Left: three S2+S1 chips as ``PairedDataset`` reads them (S2 true colour, S1 VV and VH in dB,
pixel-aligned on one grid), then one multi-crop global view of the first chip, cut with the
same geometry from every band. Right (with ``--knn``): the k-NN accuracies that
``benchmarks/fusion_knn.py`` measured.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures" / "fusion_pairs.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knn", type=Path, default=None, help="fusion_knn.json to plot")
    parser.add_argument("--data", type=Path, default=None, help="demo catalog (else written)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geodino.datasets import PairedDataset
    from geodino.demo.catalog import (
        DemoCatalog,
        DemoSentinel1,
        DemoSentinel2,
        write_demo_catalog,
    )
    from geodino.plotting import to_rgb
    from geodino.samplers import AOISampler
    from geodino.transforms import MultiCrop

    with tempfile.TemporaryDirectory() as tmp:
        catalog = (
            DemoCatalog.load(args.data)
            if args.data
            else write_demo_catalog(Path(tmp) / "data", seed=0, scene_size=256)
        )
        pairs = PairedDataset(
            {"s2": DemoSentinel2(catalog.root), "s1": DemoSentinel1(catalog.root)}
        )
        sampler = AOISampler(pairs, catalog.aoi, 64, generator=torch.Generator().manual_seed(3))
        chips = torch.stack([pairs[sampler.sample(i, 0)]["image"] for i in range(3)])
    names = pairs.band_names
    rgb = [names.index(b) for b in ("B04", "B03", "B02")]
    vv, vh = names.index("VV"), names.index("VH")
    crop = MultiCrop(
        global_crops_size=56,
        local_crops_size=28,
        local_crops_number=0,
        band_kinds=pairs.band_kinds,
        brightness=0.0,
        contrast=0.0,
        blur_p=(0, 0, 0),
        speckle_looks=None,
        db_shift=0.0,
        per_band_jitter=0.0,
    )
    view = crop(torch.nan_to_num(chips[:1]), generator=torch.Generator().manual_seed(1))
    view = view["global_crops"][0]

    columns = 4 if args.knn else 3
    fig = plt.figure(figsize=(2.2 * columns + (0.8 if args.knn else 0), 8.6))
    grid = fig.add_gridspec(4, columns, width_ratios=[1, 1, 1, 1.4][:columns])
    rows = [(f"chip {i + 1}", chips[i]) for i in range(3)] + [("crop of 1", view)]
    for r, (title, image) in enumerate(rows):
        panels = [
            ("S2 B04/B03/B02", to_rgb(image, rgb)),
            ("S1 VV (dB)", image[vv].numpy()),
            ("S1 VH (dB)", image[vh].numpy()),
        ]
        for c, (label, data) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(data, cmap=None if data.ndim == 3 else "gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}: {label}" if c == 0 else label, fontsize=7)
    if args.knn:
        result = json.loads(args.knn.read_text())
        runs = result["runs"]
        labels, pretrained, random_init = [], [], []
        for run, entry in runs.items():
            labels.append({"s2": "S2 alone", "s1": "S1 alone"}.get(run, f"S1+S2 {run}"))
            pretrained.append(entry["knn_accuracy_pretrained"])
            random_init.append(entry["knn_accuracy_random_init"])
        ax = fig.add_subplot(grid[:, 3])
        y = range(len(labels))
        ax.barh([i + 0.2 for i in y], pretrained, 0.4, label="pretrained")
        ax.barh([i - 0.2 for i in y], random_init, 0.4, label="random init", color="0.7")
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("k-NN accuracy, held-out chips", fontsize=8)
        steps = result["settings"]["steps"]
        ax.set_title(f"demo catalog, {steps} CPU steps each", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    # a 256-colour palette keeps the speckled SAR panels small enough for the repository
    from PIL import Image

    Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
