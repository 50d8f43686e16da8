"""How building a STACCatalog's index grows with the number of items, against the per-file index.

Generates STAC-GeoParquet files of 10^3, 10^4 and 10^5 items (and 10^6 with ``--million``) in the
stac-geoparquet layout with pyarrow (four per-band assets at 10 m and one at 20 m, items in
two UTM zones, hrefs on s3:// that are never opened), then measures in a fresh process per
size: the index build (``STACCatalog(...)``: reading the file, resolving bands, footprints
in the dataset CRS), its peak RSS growth, the lookup of the items under a random chip (what
each read does first) and, with ``--sampler``, the draw of a random chip by ``AOISampler``
(its build, then ``sample``). For comparison it builds ``MultiBandGeoTIFF`` (which opens
every file) over 10^3 and 10^4 tiny local GeoTIFFs and prints the ratio to the STAC index
of as many items.

    python benchmarks/stac_index.py [--items 10000 100000] [--million] [--sampler]
        [--files 1000 10000]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BANDS = (("blue", "B02", 10), ("red", "B04", 10), ("nir", "B08", 10), ("swir16", "B11", 20))
SIDE = 10980  # a Sentinel-2 tile at 10 m


def _lists(values: np.ndarray, width: int, kind: pa.DataType) -> pa.ListArray:
    offsets = pa.array(np.arange(0, len(values) * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), type=kind))


def write_items(path: Path, items: int) -> None:
    """``items`` Sentinel-2-like items over a grid of tiles, half in UTM 31N, half in 32N."""
    rng = np.random.default_rng(0)
    n = np.arange(items)
    zone = 32631 + (n % 2)
    # 8 x 8 tiles per zone, 100 km apart (overlapping by 10 km like MGRS tiles); the
    # items of a tile are its acquisitions over a year
    tile = (n // 2) % 64
    left = 200000.0 + (tile % 8) * 100000.0
    top = 5500000.0 - (tile // 8) * 100000.0
    ids = pa.array([f"S2_{i:07d}" for i in n])
    fields, arrays = [], []
    for key, name, res in BANDS:
        shape = np.column_stack([np.full(items, SIDE * 10 // res)] * 2)
        transform = np.column_stack(
            [np.full(items, res), np.zeros(items), left, np.zeros(items), -np.full(items, res), top]
        ).astype(np.float64)
        href = pa.compute.binary_join_element_wise(
            "s3://bucket/tiles/", ids, pa.scalar(f"/{name}.tif"), ""
        )
        eo = pa.array(
            [[{"name": name, "common_name": key}]] * items,
            type=pa.list_(pa.struct([("name", pa.string()), ("common_name", pa.string())])),
        )
        raster = pa.array(
            [[{"nodata": 0.0, "data_type": "uint16"}]] * items,
            type=pa.list_(pa.struct([("nodata", pa.float64()), ("data_type", pa.string())])),
        )
        asset = pa.StructArray.from_arrays(
            [
                href,
                pa.array(["image/tiff; application=geotiff"] * items),
                eo,
                raster,
                _lists(shape, 2, pa.int64()),
                _lists(transform, 6, pa.float64()),
            ],
            names=["href", "type", "eo:bands", "raster:bands", "proj:shape", "proj:transform"],
        )
        fields.append(key)
        arrays.append(asset)
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    table = pa.table(
        {
            "type": pa.array(["Feature"] * items),
            "id": ids,
            "collection": pa.array(["sentinel-2-l2a"] * items),
            "datetime": pa.array(
                ((start + rng.integers(0, 365 * 86400, items)) * 1e6).astype("int64"),
                type=pa.timestamp("us", tz="UTC"),
            ),
            "eo:cloud_cover": pa.array(rng.uniform(0, 100, items)),
            "proj:code": pa.compute.binary_join_element_wise(
                "EPSG:", pa.array(zone.astype(str)), ""
            ),
            "assets": pa.StructArray.from_arrays(arrays, names=fields),
        }
    )
    pq.write_table(table, path)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_stac(path: str, sampler: bool = False) -> dict[str, float]:
    """Run in a fresh process: build, lookups and (with ``sampler``) draws on one catalog."""
    from geodino.datasets import STACCatalog
    from geodino.samplers import AOISampler
    from geodino.seeding import torch_generator

    before = _rss_mb()
    start = time.perf_counter()
    dataset = STACCatalog(path, bands=["B02", "red", "nir", "swir16"])
    build = time.perf_counter() - start
    rss = _rss_mb() - before
    items = len(dataset.index)
    x, y, t = dataset.bounds
    rng = np.random.default_rng(1)
    dataset._rows(x, y, t)  # builds the spatial index, as the first read does
    start = time.perf_counter()
    for _ in range(200):
        x0 = rng.uniform(x.start, x.stop - 2560)
        y0 = rng.uniform(y.start, y.stop - 2560)
        dataset._rows(slice(x0, x0 + 2560, 10), slice(y0, y0 + 2560, 10), t)
    lookup = (time.perf_counter() - start) / 200
    sampler_build = draw = float("nan")
    if sampler:
        start = time.perf_counter()
        chips = AOISampler(dataset, None, 256, length=1000, generator=torch_generator(0))
        sampler_build = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(200):
            chips.sample(i)
        draw = (time.perf_counter() - start) / 200
    return {
        "items": items,
        "build_s": build,
        "build_us_per_item": build / items * 1e6,
        "rss_mb": rss,
        "rss_bytes_per_item": rss * 2**20 / items,
        "lookup_ms": lookup * 1e3,
        "sampler_build_s": sampler_build,
        "draw_ms": draw * 1e3,
    }


def measure_files(root: str) -> dict[str, float]:
    """Run in a fresh process: MultiBandGeoTIFF over a folder (every file opened)."""
    from geodino.datasets import MultiBandGeoTIFF

    before = _rss_mb()
    start = time.perf_counter()
    dataset = MultiBandGeoTIFF(root)
    build = time.perf_counter() - start
    items = len(dataset.index)
    return {
        "items": items,
        "build_s": build,
        "build_us_per_item": build / items * 1e6,
        "rss_mb": _rss_mb() - before,
    }


def _child(kind: str, target: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, target, *sys.argv[1:]],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="also 10^6 items")
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--sampler", action="store_true", help="also build AOISampler and time its draws"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, target = args.child
        result = measure_stac(target, args.sampler) if kind == "stac" else measure_files(target)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    from scaling import write_catalog

    # the STAC index also on the per-file counts, for a ratio on the same number of items
    sizes = sorted({*args.files, *args.items, *([1_000_000] if args.million else [])})
    rows: dict[str, dict[int, dict[str, float]]] = {"stac": {}, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for items in sizes:
            path = Path(tmp) / f"items_{items}.parquet"
            write_items(path, items)
            rows["stac"][items] = _child("stac", str(path))
            r = rows["stac"][items]
            print(
                f"STAC {items:>9,d} items: index {r['build_s']:7.2f} s "
                f"({r['build_us_per_item']:6.1f} us/item), RSS +{r['rss_mb']:7.1f} MB "
                f"({r['rss_bytes_per_item']:6.0f} B/item), lookup {r['lookup_ms']:.3f} ms, "
                f"sampler build {r['sampler_build_s']:.2f} s, draw {r['draw_ms']:.3f} ms",
                flush=True,
            )
        for files in args.files:
            root = Path(tmp) / f"files_{files}"
            write_catalog(root, files)
            rows["files"][files] = _child("files", str(root))
            r = rows["files"][files]
            stac = rows["stac"][files]
            r["stac_ratio"] = r["build_s"] / stac["build_s"]
            print(
                f"files {files:>8,d}: index {r['build_s']:7.2f} s "
                f"({r['build_us_per_item']:6.1f} us/file, RSS +{r['rss_mb']:.1f} MB); the STAC "
                f"index of {files:,d} items is {r['stac_ratio']:.0f}x faster",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
