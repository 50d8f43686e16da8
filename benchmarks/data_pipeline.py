"""Chips/s through GeoDINODataModule vs plain rasterio windowed reads of the same chips.

Writes a synthetic GeoTIFF catalog (13-band uint16, DEFLATE; 256-px tiles, strips or COG;
optionally a second UTM zone) into a temporary folder, draws the same chip windows both ways
in one run and prints a table with the ratio. GDAL's cache is kept small
(``GDAL_CACHEMAX=16`` MB) so that the catalog does not sit in memory as a small test archive
would; ``--cached`` instead gives GDAL 1 GB and reads every chip once before timing, so both
sides measure their per-chip overhead on pixels already decoded.

    python benchmarks/data_pipeline.py --chips 512 --workers 0 1 2 [--mixed-crs]
        [--layout tiled|striped|cog] [--cached] [--json OUT]
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

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import from_bounds  # noqa: E402


def write_catalog(root: Path, files: int, size: int, bands: int, mixed_crs: bool,
                  tiled: bool = True, cog: bool = False) -> None:
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
            "driver": "GTiff", "height": size, "width": size, "count": bands,
            "dtype": "uint16", "crs": crs, "nodata": 0, "compress": "deflate",
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
                if b.left <= x.start and x.stop <= b.right and b.bottom <= y.start and y.stop <= b.top:
                    window = from_bounds(x.start, y.start, x.stop, y.stop, src.transform)
                    src.read(window=window, out_shape=(src.count, self.chip, self.chip))
                    break
            else:
                raise RuntimeError(f"no file holds the chip {x}, {y}")
        return time.perf_counter() - start


def measure(root: Path, chips: int, chip: int, workers: int, batch: int,
            cached: bool) -> tuple[float, float]:
    """Chips/s through GeoDINODataModule's training loader and through plain rasterio.

    Without workers both read in this process and take turns batch by batch, so that load
    from other processes on the machine falls on both alike. With workers the loader runs
    first (its workers prefetch), then rasterio reads the same windows.
    """
    from geodino.datamodules import GeoDINODataModule
    from geodino.datasets import MultiBandGeoTIFF

    dm = GeoDINODataModule(
        MultiBandGeoTIFF(root), chip_size=chip, batch_size=batch, num_workers=workers,
        seed=0, statistics=None, statistics_chips=1,
    )
    dm.setup_draws()
    queries = [dm.train_draw.sampler.sample(i) for i in range(chips)]
    reader = RasterioReader(root, chip)
    if cached:  # decode every chip once on both sides: the timed reads then hit the cache
        for position in range(chips):
            dm.train_draw(position)
        reader.read(queries)
    loader = iter(dm.train_dataloader())
    next(loader)  # start workers and open files outside the timing
    reader.read(queries[:batch])
    n = (chips // batch) - 1
    geodino = rasterio_s = 0.0
    if workers == 0:
        for i in range(1, n + 1):
            start = time.perf_counter()
            next(loader)
            geodino += time.perf_counter() - start
            rasterio_s += reader.read(queries[i * batch:(i + 1) * batch])
    else:
        start = time.perf_counter()
        for _ in range(n):
            next(loader)
        geodino = time.perf_counter() - start
        rasterio_s = reader.read(queries[batch:batch * (n + 1)])
    return n * batch / geodino, n * batch / rasterio_s


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=512)
    parser.add_argument("--chip", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--mixed-crs", action="store_true")
    parser.add_argument("--layout", choices=["tiled", "striped", "cog"], default="tiled",
                        help="256-px tiles, strips (one row per block) or a COG")
    parser.add_argument("--cached", action="store_true",
                        help="pixels already in GDAL's cache (1 GB, every chip read once first)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_catalog(root, args.files, args.size, args.bands, args.mixed_crs,
                      args.layout != "striped", args.layout == "cog")
        for workers in args.workers:
            rate, base = measure(root, args.chips, args.chip, workers, args.batch, args.cached)
            rows.append({"workers": workers, "geodino_chips_per_s": rate,
                         "rasterio_chips_per_s": base, "ratio": rate / base})
    layout = ("mixed-CRS" if args.mixed_crs else "same-CRS") + f", {args.layout}" + (
        ", cached" if args.cached else "")
    print(f"data pipeline: {args.bands} bands, {args.chip} px chips, {layout}, "
          f"GDAL_CACHEMAX={os.environ['GDAL_CACHEMAX']} MB, {os.cpu_count()} cores")
    print(f"{'workers':>8} {'geodino chips/s':>16} {'rasterio chips/s':>17} {'ratio':>7}")
    for r in rows:
        print(f"{r['workers']:>8} {r['geodino_chips_per_s']:>16.1f} "
              f"{r['rasterio_chips_per_s']:>17.1f} {r['ratio']:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
