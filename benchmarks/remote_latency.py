"""Chips/s from object storage with per-request latency, against local files and naive rasterio.

Writes a STAC catalog of Sentinel-2-like COGs (``--scenes`` items of ``--size`` px at 10 m:
blue, red and nir at 10 m, swir16 at 20 m; 256-px tiles, DEFLATE; side by side with gaps, so
that every chip lies in one item), uploads them to moto's S3 server on 127.0.0.1 and puts
the fault proxy of the tests in front of it with ``--latency`` seconds added to every
request (tests/servers.py: the benchmark imports the test servers from there, so it runs from
the repository root). Then, in one run, for each DataLoader worker count (``--workers``):

- local: ``STACCatalog`` over the same COGs on local disk;
- s3 L ms, c threads: ``STACCatalog`` over ``s3://`` hrefs through the proxy, with
  ``RemoteSettings(concurrent_reads=c)`` for each ``--threads``;
- naive: plain rasterio through the same proxy: each chip opens its four band files and
  reads the window (GDAL's defaults apart from the endpoint: no COG settings, no kept
  handles), in the same DataLoader.

Every side reads the same chips (``AOISampler``, one seed) as ``raw_sample`` does in the
training loader, batches of ``--batch``; each worker first opens every file (one chip per
item, outside the timing), the first batch is not timed either. Rates are printed with their
ratio to the local rate at the same worker count and to the best local rate, the requests
per chip the proxy saw, and the fewest workers x threads that reach 0.8 x the best local
rate at each latency.

    python benchmarks/remote_latency.py [--latency 0.02 0.08] [--workers 0 2 4 8]
        [--threads 1 4] [--chips 256] [--json OUT]

Every read happens in loader workers (forked), none in this process, which hosts the servers.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# GDAL reads its cache size once, before the first raster is opened: a small cache, as a
# worker reading a catalog much larger than its memory has
os.environ.setdefault("GDAL_CACHEMAX", "16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import from_bounds
from torch.utils.data import DataLoader, Dataset

from geodino.datasets import STACCatalog
from geodino.datasets.remote import RemoteSettings, gdal_path
from tests.servers import FaultProxy, S3Server
from tests.stac_catalogs import BANDS, Scene, write_items

BAND_NAMES = [name for _, name, _, _ in BANDS]
Query = tuple[slice, slice, slice]


def write_scenes(root: Path, scenes: int, size: int) -> list[Scene]:
    """Sentinel-2-like items: one COG per band, 10 m bands ``size`` px, 20 m bands half."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(scenes):
        scene = Scene(
            f"S2_{i:03d}",
            32631,
            (300000.0 + i * (size * 10 + 5000), 5000000.0),
            datetime(2024, 6, 1 + i % 28, tzinfo=UTC),
            5.0,
        )
        folder = root / scene.id
        folder.mkdir(parents=True)
        for key, name, _, res in BANDS:
            n = size * 10 // res
            base = rng.integers(200, 4000, size=(n // 16, n // 16), dtype=np.uint16)
            data = base.repeat(16, 0).repeat(16, 1) + rng.integers(0, 50, (n, n), np.uint16)
            path = folder / f"{name}.tif"
            with rasterio.open(
                path,
                "w",
                driver="COG",
                height=n,
                width=n,
                count=1,
                dtype="uint16",
                crs="EPSG:32631",
                nodata=0,
                transform=from_origin(*scene.origin, res, res),
                blocksize=256,
                compress="deflate",
                overviews="NONE",
            ) as dst:
                dst.write(data[None])
            scene.files[key] = path
        out.append(scene)
    return out


class STACChips(Dataset[torch.Tensor]):
    """The chips at some queries, read as the training loader reads them (``raw_sample``)."""

    def __init__(self, dataset: STACCatalog, queries: list[Query], warm: list[Query]) -> None:
        """Hold the dataset, the timed queries and one query per item to open its files."""
        self.dataset, self.queries, self.warm = dataset, queries, warm

    def open_files(self) -> None:
        """Read one chip per item: every file is open before the timing (a worker's start)."""
        for query in self.warm:
            self.read(query)

    def read(self, query: Query) -> torch.Tensor:
        """One chip."""
        image: torch.Tensor = self.dataset.raw_sample(query)["image"]
        return image

    def __getitem__(self, i: int) -> torch.Tensor:
        """The i-th chip."""
        return self.read(self.queries[i])

    def __len__(self) -> int:
        """Chips."""
        return len(self.queries)


class NaiveChips(STACChips):
    """Plain rasterio: each chip opens its item's band files and reads their windows."""

    def __init__(
        self,
        dataset: STACCatalog,
        queries: list[Query],
        warm: list[Query],
        options: dict[str, str],
    ) -> None:
        """Hold the GDAL options (the endpoint only) besides the queries."""
        super().__init__(dataset, queries, warm)
        self.options = options
        self.boxes = dataset.index.geometry.bounds.to_numpy()

    def read(self, query: Query) -> torch.Tensor:
        """One chip, every band file opened and read on its own."""
        x, y, _ = query
        b = self.boxes
        row = int(
            np.flatnonzero(
                (b[:, 0] <= x.start)
                & (b[:, 2] >= x.stop)
                & (b[:, 1] <= y.start)
                & (b[:, 3] >= y.stop)
            )[0]
        )
        height = round((y.stop - y.start) / y.step)
        width = round((x.stop - x.start) / x.step)
        out = np.empty((len(BANDS), height, width), dtype=np.uint16)
        with rasterio.Env(**self.options):
            for k, (key, _, _, _) in enumerate(BANDS):
                with rasterio.open(gdal_path(self.dataset.href(key, row))) as src:
                    window = from_bounds(x.start, y.start, x.stop, y.stop, src.transform)
                    src.read(
                        1,
                        window=window,
                        out=out[k],
                        resampling=Resampling.bilinear,
                    )
        return torch.from_numpy(out)


def _open_files(worker: int) -> None:
    info = torch.utils.data.get_worker_info()
    assert info is not None
    info.dataset.open_files()


def rate(chips: STACChips, workers: int, batch: int) -> float:
    """Chips/s through a DataLoader, first batch and file opens outside the timing.

    Only workers read (this process never does): GDAL's range cache of a process that had
    read the objects would be inherited by the workers it forks.
    """
    loader = DataLoader(chips, batch_size=batch, num_workers=workers, worker_init_fn=_open_files)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    n = sum(len(b) for b in batches)
    return n / (time.perf_counter() - start)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chips", type=int, default=256)
    parser.add_argument("--chip", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.02, 0.08])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--naive-workers", type=int, nargs="+", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if min(args.workers + (args.naive_workers or [1])) < 1:
        parser.error("--workers must be >= 1: only loader workers read")
    naive_workers = args.naive_workers or [args.workers[0], args.workers[-1]]
    from geodino.samplers import AOISampler
    from geodino.seeding import torch_generator

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, S3Server() as s3:
        root = Path(tmp)
        scenes = write_scenes(root / "cogs", args.scenes, args.size)
        local_catalog = write_items(scenes, root / "local.parquet")
        local = STACCatalog(local_catalog, bands=BAND_NAMES)
        sampler = AOISampler(
            local, None, args.chip, length=args.chips, generator=torch_generator(0)
        )
        queries = list(sampler)
        t = local.bounds[2]
        warm = []
        for left, bottom, _, _ in local.index.geometry.bounds.to_numpy():
            side = args.chip * 10.0
            warm.append((slice(left, left + side, 10.0), slice(bottom, bottom + side, 10.0), t))

        def href(path: Path) -> str:
            return s3.upload(path, "bench", str(path.relative_to(root / "cogs")))

        remote_catalog = write_items(scenes, root / "s3.parquet", href)
        for workers in args.workers:
            rows.append(
                {
                    "source": "local",
                    "latency_ms": 0.0,
                    "workers": workers,
                    "threads": 1,
                    "chips_per_s": rate(
                        STACChips(STACCatalog(local_catalog, bands=BAND_NAMES), queries, warm),
                        workers,
                        args.batch,
                    ),
                }
            )
            print(f"local, {workers} workers: {rows[-1]['chips_per_s']:.1f} chips/s", flush=True)
        for latency in args.latency:
            with FaultProxy(s3.port, latency=latency) as proxy:
                endpoint = {"endpoint": proxy.endpoint, "https": False, "virtual_hosting": False}
                for threads in args.threads:
                    for workers in args.workers:
                        settings = RemoteSettings(**endpoint, concurrent_reads=threads)
                        dataset = STACCatalog(remote_catalog, bands=BAND_NAMES, remote=settings)
                        proxy.clear()
                        chips = STACChips(dataset, queries, warm)
                        speed = rate(chips, workers, args.batch)
                        rows.append(
                            {
                                "source": "s3",
                                "latency_ms": latency * 1e3,
                                "workers": workers,
                                "threads": threads,
                                "chips_per_s": speed,
                                "requests_per_chip": proxy.count(method="GET") / len(queries),
                            }
                        )
                        print(
                            f"s3 {latency * 1e3:.0f} ms, {workers} workers x {threads} threads: "
                            f"{speed:.1f} chips/s",
                            flush=True,
                        )
                options = RemoteSettings(**endpoint).gdal_options()
                naive_options = {k: v for k, v in options.items() if k.startswith("AWS_")}
                dataset = STACCatalog(remote_catalog, bands=BAND_NAMES)
                for workers in naive_workers:
                    proxy.clear()
                    chips = NaiveChips(dataset, queries, warm, naive_options)
                    speed = rate(chips, workers, args.batch)
                    rows.append(
                        {
                            "source": "naive rasterio",
                            "latency_ms": latency * 1e3,
                            "workers": workers,
                            "threads": 1,
                            "chips_per_s": speed,
                            "requests_per_chip": proxy.count() / len(queries),
                        }
                    )
                    print(
                        f"naive {latency * 1e3:.0f} ms, {workers} workers: {speed:.1f} chips/s",
                        flush=True,
                    )
    local_rates = {r["workers"]: r["chips_per_s"] for r in rows if r["source"] == "local"}
    best = max(local_rates.values())
    print(
        f"\nremote latency: {args.scenes} items of {args.size} px (4 band COGs, 256-px tiles), "
        f"{args.chips} chips of {args.chip} px, batch {args.batch}, "
        f"GDAL_CACHEMAX={os.environ['GDAL_CACHEMAX']} MB, {os.cpu_count()} cores"
    )
    print(
        f"{'source':>15} {'latency':>8} {'workers':>8} {'threads':>8} {'chips/s':>8} "
        f"{'req/chip':>9} {'vs local':>9} {'vs best local':>14}"
    )
    for r in rows:
        r["vs_local_same_workers"] = r["chips_per_s"] / local_rates[r["workers"]]
        r["vs_best_local"] = r["chips_per_s"] / best
        requests = r.get("requests_per_chip")
        print(
            f"{r['source']:>15} {r['latency_ms']:>6.0f}ms {r['workers']:>8} {r['threads']:>8} "
            f"{r['chips_per_s']:>8.1f} {'' if requests is None else f'{requests:.2f}':>9} "
            f"{r['vs_local_same_workers']:>8.2f}x {r['vs_best_local']:>13.2f}x"
        )
    for latency in args.latency:
        enough = [
            r
            for r in rows
            if r["source"] == "s3"
            and r["latency_ms"] == latency * 1e3
            and r["vs_best_local"] >= 0.8
        ]
        if enough:
            r = min(enough, key=lambda r: (max(r["workers"], 1) * r["threads"], r["workers"]))
            print(
                f"{latency * 1e3:.0f} ms: >= 0.8x the best local rate with {r['workers']} "
                f"workers x {r['threads']} threads ({r['vs_best_local']:.2f}x)"
            )
        else:
            top = max(
                (r for r in rows if r["source"] == "s3" and r["latency_ms"] == latency * 1e3),
                key=lambda r: r["vs_best_local"],
            )
            print(
                f"{latency * 1e3:.0f} ms: 0.8x of the best local rate not reached; best "
                f"{top['vs_best_local']:.2f}x with {top['workers']} workers x "
                f"{top['threads']} threads"
            )
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
