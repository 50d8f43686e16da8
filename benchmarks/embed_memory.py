"""Peak memory of ``geodino embed`` from a 1024^2 to an 8192^2 scene at a 384-wide backbone.

Writes a random ViT-S/14-wide backbone of depth 1 (embed_dim 384, 6 heads, 3 bands, trained
size 224: what sizes the embedding grid, at a fraction of ViT-S's compute) and scenes of
3-band uint16 GeoTIFFs, then embeds each scene to a COG in a fresh process and reports that
process's peak RSS (``ru_maxrss``) and time:

- ``streamed``: ``geodino.inference.embed`` (the grid assembled on disk window by window),
  end to end: the time of its last step (statistics, overviews and the COG translation,
  ``finish_cog``) is reported apart;
- ``in memory``: the path ``embed`` took before, in the same run: the whole grid assembled
  in memory (``embed_region``), then ``write_cog`` (which copies it as float32), GDAL's
  cache left at its default.

Ratios: each scene's peak against the smallest scene's, per path.

    python benchmarks/embed_memory.py [--sizes 1024 4096 8192] [--paths streamed memory]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

BANDS = ["B02", "B03", "B04"]
CHILD = """
import json, resource, sys, time
from pathlib import Path
path, export, raster, out = sys.argv[1:5]
start = time.perf_counter()
translation = []
if path == "streamed":
    import geodino.inference.embedding as embedding
    from geodino.inference import embed
    finish = embedding.finish_cog
    def timed(*args, **kwargs):
        begin = time.perf_counter()
        result = finish(*args, **kwargs)
        translation.append(time.perf_counter() - begin)
        return result
    embedding.finish_cog = timed
    embed(export, [raster], out, progress=False)
else:
    from geodino.export import load_backbone
    from geodino.inference import plan_regions
    from geodino.inference.cog import write_cog
    from geodino.inference.embedding import embed_region
    backbone = load_backbone(export)
    (region,) = plan_regions(backbone, [raster], None)
    grid, _ = embed_region(backbone, region)
    names = [f"emb_{j:03d}" for j in range(backbone.embed_dim)]
    write_cog(Path(out), grid, region.crs, region.out_transform, names, {})
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mb": peak, "seconds": seconds, "cog_seconds": sum(translation)}))
"""


def write_export(out: Path) -> Path:
    """A random 384-wide, depth-1 DINOv2-style ViT with 4 registers, as a geodino export."""
    import timm
    import torch

    from geodino.export import write_export as write

    kwargs = {"img_size": 224, "embed_dim": 384, "depth": 1, "num_heads": 6}
    name = "vit_small_patch14_reg4_dinov2"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, in_chans=len(BANDS), **kwargs)
    statistics = {
        "band_names": BANDS,
        "mean": [900.0, 1000.0, 1100.0],
        "std": [300.0, 300.0, 350.0],
        "nodata": 0.0,
    }
    write(
        model.state_dict(),
        out,
        name,
        len(BANDS),
        model_kwargs=kwargs,
        bands=BANDS,
        statistics=statistics,
    )
    return out


def write_scene(path: Path, size: int) -> Path:
    """A ``size``-px square 3-band uint16 scene, written 1,024 rows at a time."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(BANDS),
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_200_000.0, 10.0, 10.0),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 1024):
            rows = min(1024, size - row)
            data = rng.integers(300, 3000, (len(BANDS), rows, size), dtype=np.uint16)
            dst.write(data, window=Window(0, row, size, rows))
        dst.descriptions = tuple(BANDS)
    return path


def run(path: str, export: Path, raster: Path, out: Path) -> dict[str, float]:
    """Embed one scene in a fresh process; its peak RSS and time."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(export), str(raster), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    out.unlink()
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--paths", nargs="+", default=["streamed", "memory"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = write_export(root / "export")
        for size in args.sizes:
            raster = write_scene(root / f"scene_{size}.tif", size)
            for path in args.paths:
                start = time.perf_counter()
                figures = run(path, export, raster, root / f"emb_{size}_{path}.tif")
                rows.append({"size": size, "path": path, **figures})
                print(f"{path} {size}: {time.perf_counter() - start:.0f} s", flush=True)
            raster.unlink()
    print("\nembed peak memory: 384-wide depth-1 ViT, patch 14, 224-px windows, 3-band scenes")
    print(
        f"{'scene':>6} {'path':>9} {'grid px':>8} {'peak RSS MB':>12} {'vs smallest':>12} "
        f"{'s':>7} {'COG s':>7}"
    )
    for r in rows:
        smallest = next(x for x in rows if x["path"] == r["path"])
        r["peak_vs_smallest"] = r["peak_rss_mb"] / smallest["peak_rss_mb"]
        grid = -(-r["size"] // 14)
        print(
            f"{r['size']:>6} {r['path']:>9} {grid:>6}^2 {r['peak_rss_mb']:>12.0f} "
            f"{r['peak_vs_smallest']:>11.2f}x {r['seconds']:>7.1f} {r['cog_seconds']:>7.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": None}, "rows": rows}))


if __name__ == "__main__":
    main()
