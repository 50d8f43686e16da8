"""How indexing, drawing and reading chips cost grows with the number of files in a catalog.

Writes catalogs of 10 to 10,000 tiny GeoTIFF scenes (4-band uint16, 64 x 64 px, DEFLATE,
side by side on a grid in one UTM zone, 1 px apart) with rasterio, then measures for each:

- index: building ``MultiBandGeoTIFF`` (every file opened and checked, the index built);
- sampler: building ``AOISampler`` over the data footprint, its pickled size (what each
  loader worker receives) and the cost of one draw (``sample(i)``, 2,000 draws);
- first pass: reading ``--chips`` drawn chips once (``raw_sample``, what loader workers
  read), which opens every file the chips touch;
- warm: reading the same chips again (median of ``--passes``): the steady rate, with every
  touched file open; the baseline, measured in the same run on the same catalog right after
  each pass, is plain rasterio reading the same windows from handles it opened beforehand.
  The passes take turns catalog by catalog, so that load from other processes falls on
  every catalog alike.

Then, without files, the draw-side cost at ``--index`` footprints (default 10^6): building
``AOISampler`` over a synthetic index of touching footprints, and of footprints 1 px
apart, and drawing from it, and the
two lookups that used to scan every footprint per chip (the file under a chip, for
``block_aligned`` draws and for windowed reads) against that scan.

Ratios: each catalog's warm rate against the first catalog's and against rasterio's; flat
cost keeps both flat.

    python benchmarks/scaling.py [--files 10 100 1000 10000] [--index 1000000] [--json OUT]
"""

import argparse
import json
import pickle
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import shapely
from geopandas import GeoDataFrame
from rasterio.transform import from_origin
from rasterio.windows import Window

SIZE = 64
RES = 10.0


def write_catalog(root: Path, files: int) -> None:
    """Write ``files`` scenes on a square grid with 1-px gaps between them."""
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(files)))
    root.mkdir(parents=True)
    for i in range(files):
        row, col = divmod(i, side)
        data = rng.integers(1, 4000, size=(4, SIZE, SIZE), dtype=np.uint16)
        profile = {
            "driver": "GTiff",
            "height": SIZE,
            "width": SIZE,
            "count": 4,
            "dtype": "uint16",
            "crs": "EPSG:32631",
            "nodata": 0,
            "compress": "deflate",
            "transform": from_origin(
                300000 + col * (SIZE + 1) * RES, 5000000 - row * (SIZE + 1) * RES, RES, RES
            ),
        }
        with rasterio.open(root / f"scene_{i:05d}.tif", "w", **profile) as dst:
            dst.write(data)


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rasterio_windows(dataset: Any, queries: list[Any]) -> list[tuple[str, Window]]:
    """The file and pixel window of each chip, as a reader holding the files would read."""
    boxes = np.asarray(dataset.index.geometry.bounds)
    paths = list(dataset.index.filepath)
    out = []
    for x, y, _ in queries:
        f = int(
            np.flatnonzero(
                (boxes[:, 0] <= x.start)
                & (boxes[:, 2] >= x.stop)
                & (boxes[:, 1] <= y.start)
                & (boxes[:, 3] >= y.stop)
            )[0]
        )
        col = round((x.start - boxes[f, 0]) / RES)
        row = round((boxes[f, 3] - y.stop) / RES)
        width, height = round((x.stop - x.start) / RES), round((y.stop - y.start) / RES)
        out.append((paths[f], Window(col, row, width, height)))
    return out


class Catalog:
    """One catalog's dataset, sampler, chips and a rasterio reader of the same windows."""

    def __init__(self, root: Path, files: int, chips: int, chip: int) -> None:
        """Index the catalog, build the sampler, time draws and the first pass."""
        from geodino.datasets import MultiBandGeoTIFF
        from geodino.samplers import AOISampler

        self.row: dict[str, float] = {"files": files}
        start = time.perf_counter()
        self.dataset = MultiBandGeoTIFF(root)
        self.row["index_s"] = time.perf_counter() - start
        start = time.perf_counter()
        sampler = AOISampler(self.dataset, None, chip, length=chips)
        self.row["sampler_s"] = time.perf_counter() - start
        self.row["sampler_pickle_mb"] = len(pickle.dumps(sampler)) / 2**20
        draws = 2000
        start = time.perf_counter()
        for i in range(draws):
            sampler.sample(i)
        self.row["draw_us"] = 1e6 * (time.perf_counter() - start) / draws
        self.queries = [sampler.sample(i) for i in range(chips)]
        self.windows = rasterio_windows(self.dataset, self.queries)
        self.row["files_touched"] = len({path for path, _ in self.windows})
        rss = rss_mb()
        start = time.perf_counter()
        for q in self.queries:
            self.dataset.raw_sample(q)
        self.row["first_pass_chips_per_s"] = chips / (time.perf_counter() - start)
        self.row["rss_growth_mb"] = rss_mb() - rss
        self.handles = {p: rasterio.open(p) for p in dict.fromkeys(p for p, _ in self.windows)}
        self.warm: list[float] = []
        self.baseline: list[float] = []

    def warm_pass(self) -> None:
        """Read the chips again through the dataset, then the windows through rasterio."""
        start = time.perf_counter()
        for q in self.queries:
            self.dataset.raw_sample(q)
        self.warm.append(len(self.queries) / (time.perf_counter() - start))
        start = time.perf_counter()
        for path, window in self.windows:
            self.handles[path].read(window=window)
        self.baseline.append(len(self.windows) / (time.perf_counter() - start))

    def result(self) -> dict[str, float]:
        """The row, with the medians of the warm passes and their per-pass ratio."""
        for src in self.handles.values():
            src.close()
        ratios = [a / b for a, b in zip(self.warm, self.baseline, strict=True)]
        return {
            **self.row,
            "warm_chips_per_s": float(np.median(self.warm)),
            "rasterio_warm_chips_per_s": float(np.median(self.baseline)),
            "warm_vs_rasterio": float(np.median(ratios)),
        }


def synthetic_index(count: int, gap: float = 0.0) -> Any:
    """A GeoDataset of ``count`` 64-px footprints on a square grid, without files.

    ``gap`` CRS units separate neighbours (0: they touch; the catalogs above leave 1 px).
    """
    from torchgeo.datasets import GeoDataset

    side = int(np.ceil(np.sqrt(count)))
    row, col = np.divmod(np.arange(count), side)
    span = SIZE * RES
    x0, y0 = 300000 + col * span, 5000000 - (row + 1) * span
    times = pd.IntervalIndex.from_arrays(
        np.full(count, pd.Timestamp(0)),
        np.full(count, pd.Timestamp.max),
        closed="both",
        name="datetime",
    )

    class Footprints(GeoDataset):
        def __getitem__(self, query: Any) -> dict[str, Any]:
            raise NotImplementedError("footprints only")

    dataset = Footprints()
    dataset.index = GeoDataFrame(
        index=times,
        geometry=shapely.box(x0, y0 + gap, x0 + span - gap, y0 + span),
        crs="EPSG:32631",
    )
    dataset._res = (RES, RES)  # the setter prints a message
    return dataset


def measure_index(count: int, chip: int) -> dict[str, float]:
    """Sampler build and draws over ``count`` footprints; the per-chip lookups against scans.

    The sampler is built twice: over touching footprints (one polygon) and over footprints
    1 px apart (``count`` polygons, as the catalogs above).
    """
    from geodino.datasets.footprints import FootprintGrid
    from geodino.samplers import AOISampler

    times = {}
    for name, gap in (("", 0.0), ("gapped_", RES)):
        dataset = synthetic_index(count, gap)
        start = time.perf_counter()
        sampler = AOISampler(dataset, None, chip, length=1000)
        times[f"{name}sampler_s"] = time.perf_counter() - start
        draws = 2000
        start = time.perf_counter()
        for i in range(draws):
            sampler.sample(i)
        times[f"{name}draw_us"] = 1e6 * (time.perf_counter() - start) / draws

    boxes = np.asarray(dataset.index.geometry.bounds)
    start = time.perf_counter()
    grid = FootprintGrid(boxes)
    grid_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
    points = rng.uniform(lo, hi, (2000, 2))
    width = chip * RES
    start = time.perf_counter()
    for x, y in points.tolist():
        grid.overlapping(x, y, x + width, y + width)
    overlap_us = 1e6 * (time.perf_counter() - start) / len(points)
    start = time.perf_counter()
    for k in range(0, len(points), 8):  # a draw's batch of 8 candidates
        grid.containing(points[k : k + 8, 0], points[k : k + 8, 1])
    contain_us = 1e6 * (time.perf_counter() - start) / (len(points) / 8)
    scans = 50
    start = time.perf_counter()
    for x, y in points[:scans].tolist():  # the scan each chip's read made before
        np.flatnonzero(
            (boxes[:, 0] < x + width)
            & (boxes[:, 2] > x)
            & (boxes[:, 1] < y + width)
            & (boxes[:, 3] > y)
        )
    scan_us = 1e6 * (time.perf_counter() - start) / scans
    return {
        "footprints": count,
        **times,
        "grid_build_s": grid_s,
        "chip_lookup_us": overlap_us,
        "block_lookup_us_per_8": contain_us,
        "scan_us": scan_us,
    }


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--chips", type=int, default=200)
    parser.add_argument("--chip", type=int, default=32)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--index", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalogs = []
        for files in args.files:
            root = Path(tmp) / f"catalog_{files}"
            write_catalog(root, files)
            catalogs.append(Catalog(root, files, args.chips, args.chip))
            print(f"indexed {files} files", flush=True)
        # warm passes take turns catalog by catalog, so that load from other processes
        # falls on every catalog and on rasterio alike
        for _ in range(args.passes):
            for catalog in catalogs:
                catalog.warm_pass()
        rows = [catalog.result() for catalog in catalogs]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"\nscaling: 4-band {SIZE} x {SIZE} px DEFLATE scenes, {args.chip} px chips, "
        f"{args.chips} chips, warm = median of {args.passes} passes taking turns, "
        f"RLIMIT_NOFILE {soft}"
    )
    print(
        f"{'files':>6} {'index s':>8} {'ms/file':>8} {'sampler s':>10} {'pickle MB':>10} "
        f"{'draw us':>8} {'touched':>8} {'first/s':>8} {'warm/s':>8} {'rasterio/s':>10} "
        f"{'vs rio':>7} {'vs first':>9} {'RSS +MB':>8}"
    )
    first = rows[0]
    for r in rows:
        r["index_ms_per_file"] = 1e3 * r["index_s"] / r["files"]
        r["warm_vs_first_catalog"] = r["warm_chips_per_s"] / first["warm_chips_per_s"]
        print(
            f"{r['files']:>6} {r['index_s']:>8.2f} {r['index_ms_per_file']:>8.2f} "
            f"{r['sampler_s']:>10.3f} {r['sampler_pickle_mb']:>10.3f} {r['draw_us']:>8.1f} "
            f"{r['files_touched']:>8} {r['first_pass_chips_per_s']:>8.0f} "
            f"{r['warm_chips_per_s']:>8.0f} {r['rasterio_warm_chips_per_s']:>10.0f} "
            f"{r['warm_vs_rasterio']:>6.2f}x {r['warm_vs_first_catalog']:>8.2f}x "
            f"{r['rss_growth_mb']:>8.1f}"
        )
    warm = [r["warm_chips_per_s"] for r in rows]
    relative = [r["warm_vs_rasterio"] for r in rows]
    print(
        f"warm chips/s, fastest / slowest catalog: {max(warm) / min(warm):.2f}x; "
        f"relative to rasterio on the same catalog: {max(relative) / min(relative):.2f}x"
    )
    index_rows = [measure_index(n, args.chip) for n in args.index]
    if index_rows:
        print(
            f"\n{'footprints':>10} {'sampler s':>10} {'draw us':>8} {'gapped s':>9} "
            f"{'gapped draw us':>15} {'grid s':>7} "
            f"{'chip lookup us':>15} {'block lookup us/8':>18} {'scan us':>8} {'scan/lookup':>12}"
        )
    for r in index_rows:
        print(
            f"{r['footprints']:>10} {r['sampler_s']:>10.2f} {r['draw_us']:>8.1f} "
            f"{r['gapped_sampler_s']:>9.2f} {r['gapped_draw_us']:>15.1f} "
            f"{r['grid_build_s']:>7.2f} {r['chip_lookup_us']:>15.1f} "
            f"{r['block_lookup_us_per_8']:>18.1f} {r['scan_us']:>8.0f} "
            f"{r['scan_us'] / r['chip_lookup_us']:>11.0f}x"
        )
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps({"config": config, "rows": rows, "index": index_rows}, indent=1)
        )


if __name__ == "__main__":
    main()
