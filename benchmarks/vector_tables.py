"""Time and peak memory of writing a large chip table in each vector format, chunk by chunk.

Each (format, chunk size) runs in its own process, which generates N rows of random
D-dimensional float32 embeddings with box footprints chunk by chunk and writes them with
:func:`geodino.inference.write_table`; the process reports its wall time, its resident
memory after the imports and at its peak (``ru_maxrss``), and the file size. Peak memory
grows with the chunk, not with N: the whole table (``N * D * 4`` bytes of embeddings) is
never held at once.

    python benchmarks/vector_tables.py [--rows 200000] [--dim 384] [--chunks 4096 200000]
        [--formats .gpkg .fgb .parquet]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def run_one(path: Path, rows: int, dim: int, chunk: int) -> dict[str, float]:
    """Write one table and measure it (runs in a child process)."""
    import geopandas as gpd
    import numpy as np
    import shapely

    from geodino.inference import vector_columns, write_table

    rng = np.random.default_rng(0)

    def chunks() -> Iterator[gpd.GeoDataFrame]:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            index = np.arange(start, start + n)
            x, y = 500_000 + (index % 1000) * 140.0, 5_200_000 - (index // 1000) * 140.0
            yield gpd.GeoDataFrame(
                {
                    "raster": "scene.tif",
                    "row": index // 1000 * 14,
                    "col": index % 1000 * 14,
                    **vector_columns(rng.standard_normal((n, dim), dtype=np.float32)),
                },
                geometry=shapely.box(x, y - 140, x + 140, y),
                crs="EPSG:32633",
            )

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    written = write_table(path, chunks(), "EPSG:32633", {"geodino_model": "benchmark"})
    seconds = time.perf_counter() - start
    assert written == rows
    return {
        "seconds": seconds,
        "import_rss_mb": base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "file_mb": path.stat().st_size / 2**20,
    }


def main() -> None:
    """Run every (format, chunk) in a child process and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4096, 200_000])
    parser.add_argument("--formats", nargs="+", default=[".gpkg", ".fgb", ".parquet"])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, rows, dim, chunk = args.child
        print(json.dumps(run_one(Path(path), int(rows), int(dim), int(chunk))))
        return
    table_mb = args.rows * args.dim * 4 / 2**20
    print(f"{args.rows} rows x {args.dim} float32 columns ({table_mb:.0f} MB of embeddings)")
    print(
        f"{'format':<9} {'chunk':>7} {'seconds':>8} {'RSS after imports MB':>21} "
        f"{'peak RSS MB':>12} {'file MB':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in args.formats:
            for chunk in args.chunks:
                path = Path(tmp) / f"t{suffix}"
                child = [str(path), str(args.rows), str(args.dim), str(chunk)]
                out = subprocess.run(
                    [sys.executable, __file__, "--child", *child],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{suffix:<9} {chunk:>7} {result['seconds']:>8.1f} "
                    f"{result['import_rss_mb']:>21.0f} {result['peak_rss_mb']:>12.0f} "
                    f"{result['file_mb']:>8.0f}"
                )


if __name__ == "__main__":
    main()
