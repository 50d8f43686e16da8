"""Chips/s through GeoDINODataModule vs plain rasterio windowed reads of the same chips.

Writes a synthetic GeoTIFF catalog (13-band uint16, DEFLATE; 256-px tiles, strips or COG;
optionally a second UTM zone) into a temporary folder, draws the same chip windows both ways
in one run and prints a table with the ratio. GDAL's cache is kept small
(``GDAL_CACHEMAX=16`` MB) so that the catalog does not sit in memory as a small test archive
would; ``--cached`` instead gives GDAL 1 GB and reads every chip once before timing, so both
sides measure their per-chip overhead on pixels already decoded.

``--block-aligned`` lets the data module align its chips with the files' tiling
(``GeoDINODataModule(block_aligned=True)``); the baseline stays naive: rasterio reads the
random windows the data module draws without alignment (same seed), and a third column
gives rasterio on the aligned windows themselves.

    python benchmarks/data_pipeline.py [--chips N] --workers 0 1 2 [--mixed-crs]
        [--layout tiled|striped|cog] [--cached] [--block-aligned] [--json OUT]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# GDAL reads its cache size once, before the first raster is opened
os.environ.setdefault("GDAL_CACHEMAX", "1024" if "--cached" in sys.argv else "16")

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import from_bounds


def write_catalog(
    root: Path,
    files: int,
    size: int,
    bands: int,
    mixed_crs: bool,
    tiled: bool = True,
    cog: bool = False,
) -> None:
    """Write ``files`` scenes of random-ish uint16 data side by side."""
    rng = np.random.default_rng(0)
    for i in range(files):
        crs = "EPSG:32632" if mixed_crs and i % 2 else "EPSG:32631"
        # a gap between scenes keeps every chip inside one file, so rasterio reads one window
        x0 = 300000 + i * (size * 10 + 5000)
        base = rng.integers(200, 4000, size=(bands, size // 16, size // 16), dtype=np.uint16)
        data = base.repeat(16, 1).repeat(16, 2)
        data = data + rng.integers(0, 50, size=data.shape, dtype=np.uint16)
        profile = {
            "driver": "GTiff",
            "height": size,
            "width": size,
            "count": bands,
            "dtype": "uint16",
            "crs": crs,
            "nodata": 0,
            "compress": "deflate",
            "transform": from_origin(x0, 5000000, 10, 10),
        }
        if cog:
            profile.update(driver="COG", blocksize=256, overviews="NONE")
        elif tiled:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        with rasterio.open(root / f"scene_{i:03d}.tif", "w", **profile) as dst:
            dst.write(data)


class RasterioReader:
    """Plain rasterio: each query's window read from the file that holds it."""

    def __init__(self, root: Path, chip: int) -> None:
        from rasterio.vrt import WarpedVRT

        self.chip = chip
        handles = [rasterio.open(f) for f in sorted(root.glob("*.tif"))]
        crs = handles[0].crs
        # files in another zone are read through a warped view, as any reader must
        self.handles = [h if h.crs == crs else WarpedVRT(h, crs=crs) for h in handles]

    def read(self, queries: list) -> float:
        """Read the queries; returns the seconds taken."""
        start = time.perf_counter()
        for x, y, _ in queries:
            for src in self.handles:
                b = src.bounds
                if (
                    b.left <= x.start
                    and x.stop <= b.right
                    and b.bottom <= y.start
                    and y.stop <= b.top
                ):
                    window = from_bounds(x.start, y.start, x.stop, y.stop, src.transform)
                    src.read(window=window, out_shape=(src.count, self.chip, self.chip))
                    break
            else:
                raise RuntimeError(f"no file holds the chip {x}, {y}")
        return time.perf_counter() - start


def measure(
    root: Path,
    chips: int,
    chip: int,
    workers: int,
    batch: int,
    cached: bool,
    block_aligned: bool = False,
) -> tuple[float, float, float | None]:
    """Chips/s through GeoDINODataModule's training loader and through plain rasterio.

    Without workers all sides read in this process and take turns batch by batch, so that
    load from other processes on the machine falls on them alike. With workers the loader
    runs first (its workers prefetch), then rasterio reads the windows.

    Returns:
        geodino's chips/s, rasterio's on the naive (unaligned) windows and, with
        ``block_aligned``, rasterio's on the data module's own aligned windows.
    """
    from geodino.datamodules import GeoDINODataModule
    from geodino.datasets import MultiBandGeoTIFF

    def module(aligned: bool) -> GeoDINODataModule:
        dm = GeoDINODataModule(
            MultiBandGeoTIFF(root),
            chip_size=chip,
            batch_size=batch,
            num_workers=workers,
            seed=0,
            statistics=None,
            statistics_chips=1,
            block_aligned=aligned,
        )
        dm.setup_draws()
        return dm

    dm = module(block_aligned)
    naive = module(False) if block_aligned else dm
    queries = [naive.train_draw.sampler.sample(i) for i in range(chips)]
    windows = [[queries, RasterioReader(root, chip)]]
    if block_aligned:
        windows.append(
            [[dm.train_draw.sampler.sample(i) for i in range(chips)], RasterioReader(root, chip)]
        )
    if cached:  # decode every chip once on all sides: the timed reads then hit the cache
        for position in range(chips):
            dm.train_draw(position)
        for qs, reader in windows:
            reader.read(qs)
    loader = iter(dm.train_dataloader())
    next(loader)  # start workers and open files outside the timing
    for qs, reader in windows:
        reader.read(qs[:batch])
    n = (chips // batch) - 1
    geodino = 0.0
    seconds = [0.0] * len(windows)
    if workers == 0:
        for i in range(1, n + 1):
            start = time.perf_counter()
            next(loader)
            geodino += time.perf_counter() - start
            for k, (qs, reader) in enumerate(windows):
                seconds[k] += reader.read(qs[i * batch : (i + 1) * batch])
    else:
        start = time.perf_counter()
        for _ in range(n):
            next(loader)
        geodino = time.perf_counter() - start
        for k, (qs, reader) in enumerate(windows):
            seconds[k] = reader.read(qs[batch : batch * (n + 1)])
    rates = [n * batch / s for s in seconds]
    return n * batch / geodino, rates[0], rates[1] if block_aligned else None


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chips",
        type=int,
        default=None,
        help="chips per run (default 512; 2048 with --cached, whose reads "
        "take well under a second otherwise)",
    )
    parser.add_argument("--chip", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--mixed-crs", action="store_true")
    parser.add_argument(
        "--layout",
        choices=["tiled", "striped", "cog"],
        default="tiled",
        help="256-px tiles, strips (one row per block) or a COG",
    )
    parser.add_argument(
        "--cached",
        action="store_true",
        help="pixels already in GDAL's cache (1 GB, every chip read once first)",
    )
    parser.add_argument(
        "--block-aligned",
        action="store_true",
        help="the data module aligns chips with the files' tiling; the "
        "baseline reads the unaligned random windows",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.chips is None:
        args.chips = 2048 if args.cached else 512
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_catalog(
            root,
            args.files,
            args.size,
            args.bands,
            args.mixed_crs,
            args.layout != "striped",
            args.layout == "cog",
        )
        for workers in args.workers:
            rate, base, same = measure(
                root, args.chips, args.chip, workers, args.batch, args.cached, args.block_aligned
            )
            row = {
                "workers": workers,
                "geodino_chips_per_s": rate,
                "rasterio_chips_per_s": base,
                "ratio": rate / base,
            }
            if same is not None:
                row |= {"rasterio_aligned_chips_per_s": same, "ratio_aligned": rate / same}
            rows.append(row)
    layout = (
        ("mixed-CRS" if args.mixed_crs else "same-CRS")
        + f", {args.layout}"
        + (", cached" if args.cached else "")
        + (", block-aligned" if args.block_aligned else "")
    )
    print(
        f"data pipeline: {args.bands} bands, {args.chip} px chips, {layout}, "
        f"GDAL_CACHEMAX={os.environ['GDAL_CACHEMAX']} MB, {os.cpu_count()} cores"
    )
    extra = f" {'rasterio aligned':>17} {'ratio':>7}" if args.block_aligned else ""
    print(f"{'workers':>8} {'geodino chips/s':>16} {'rasterio chips/s':>17} {'ratio':>7}{extra}")
    for r in rows:
        extra = (
            f" {r['rasterio_aligned_chips_per_s']:>17.1f} {r['ratio_aligned']:>7.2f}"
            if args.block_aligned
            else ""
        )
        print(
            f"{r['workers']:>8} {r['geodino_chips_per_s']:>16.1f} "
            f"{r['rasterio_chips_per_s']:>17.1f} {r['ratio']:>7.2f}{extra}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"config": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
