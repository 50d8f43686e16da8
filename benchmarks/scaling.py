"""How indexing and sampling cost grow with the number of files in a catalog.

Writes catalogs of 10, 100 and 1,000 tiny GeoTIFF scenes (4-band uint16, 64 x 64 px,
DEFLATE, side by side on a grid in one UTM zone) with rasterio, then measures for each:
building ``MultiBandGeoTIFF`` (every file opened and checked, the spatial index built),
building ``AOISampler`` over the data footprint (its memory: Python allocations traced while
it is built, and its pickled size, which every loader worker receives), and drawing chips.
Prints a table and the cost per file; linear growth keeps the per-file figures flat.

    python benchmarks/scaling.py [--files 10 100 1000] [--json OUT]
"""

import argparse
import json
import pickle
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_catalog(root: Path, files: int, size: int = 64) -> None:
    """Write ``files`` scenes on a square grid with 1-px gaps between them."""
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(files)))
    root.mkdir(parents=True)
    for i in range(files):
        row, col = divmod(i, side)
        data = rng.integers(1, 4000, size=(4, size, size), dtype=np.uint16)
        profile = {
            "driver": "GTiff",
            "height": size,
            "width": size,
            "count": 4,
            "dtype": "uint16",
            "crs": "EPSG:32631",
            "nodata": 0,
            "compress": "deflate",
            "transform": from_origin(
                300000 + col * (size + 1) * 10, 5000000 - row * (size + 1) * 10, 10, 10
            ),
        }
        with rasterio.open(root / f"scene_{i:04d}.tif", "w", **profile) as dst:
            dst.write(data)


def measure(root: Path, chips: int, chip: int) -> dict[str, float]:
    """Index build time, sampler build time and memory, chip draw rate."""
    from geodino.datasets import MultiBandGeoTIFF
    from geodino.samplers import AOISampler

    start = time.perf_counter()
    dataset = MultiBandGeoTIFF(root)
    index_s = time.perf_counter() - start

    tracemalloc.start()
    start = time.perf_counter()
    sampler = AOISampler(dataset, None, chip, length=chips)
    sampler_s = time.perf_counter() - start
    sampler_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    pickled_mb = len(pickle.dumps(sampler)) / 2**20

    start = time.perf_counter()
    for i in range(chips):
        dataset[sampler.sample(i)]
    draw = chips / (time.perf_counter() - start)
    return {
        "index_s": index_s,
        "sampler_s": sampler_s,
        "sampler_mb": sampler_mb,
        "sampler_pickle_mb": pickled_mb,
        "chips_per_s": draw,
    }


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--chips", type=int, default=200)
    parser.add_argument("--chip", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for files in args.files:
            root = Path(tmp) / f"catalog_{files}"
            write_catalog(root, files)
            rows.append({"files": files, **measure(root, args.chips, args.chip)})
    first = rows[0]
    print(
        f"scaling: 4-band 64 x 64 px DEFLATE scenes, {args.chip} px chips, {args.chips} "
        "chips drawn per catalog"
    )
    print(
        f"{'files':>6} {'index s':>8} {'ms/file':>8} {'sampler s':>10} {'sampler MB':>11} "
        f"{'KB/file':>8} {'pickle MB':>10} {'chips/s':>8} {'per-file vs first':>18}"
    )
    for r in rows:
        per_file = r["index_s"] / r["files"]
        r["index_ms_per_file"] = 1e3 * per_file
        r["sampler_kb_per_file"] = 1024 * r["sampler_mb"] / r["files"]
        r["index_per_file_vs_first"] = per_file / (first["index_s"] / first["files"])
        print(
            f"{r['files']:>6} {r['index_s']:>8.2f} {r['index_ms_per_file']:>8.2f} "
            f"{r['sampler_s']:>10.3f} {r['sampler_mb']:>11.2f} {r['sampler_kb_per_file']:>8.2f} "
            f"{r['sampler_pickle_mb']:>10.3f} {r['chips_per_s']:>8.1f} "
            f"{r['index_per_file_vs_first']:>17.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
