"""Open files kept per process and footprint lookups, on real GeoTIFFs written by rasterio."""

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.io import DatasetReader
from rasterio.transform import from_origin

from geodino.datasets import MultiBandGeoTIFF
from geodino.datasets.footprints import FootprintGrid
from geodino.datasets.handles import RESERVED_FDS, OpenFiles, open_file_budget

SIZE = 8


def write_catalog(root: Path, files: int) -> list[np.ndarray]:
    """``files`` 2-band 8 x 8 px scenes side by side, 1 px apart; returns their pixels."""
    root.mkdir()
    pixels = []
    for i in range(files):
        data = np.full((2, SIZE, SIZE), i + 1, np.uint16)
        data[1] += np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE)
        profile = {
            "driver": "GTiff",
            "height": SIZE,
            "width": SIZE,
            "count": 2,
            "dtype": "uint16",
            "crs": "EPSG:32631",
            "nodata": 0,
            "transform": from_origin(500000 + i * (SIZE + 1) * 10, 5000000, 10, 10),
        }
        with rasterio.open(root / f"s{i:04d}.tif", "w", **profile) as dst:
            dst.write(data)
        pixels.append(data)
    return pixels


def chip(i: int, ds: MultiBandGeoTIFF) -> tuple[slice, slice, slice]:
    """A 4 x 4 px chip inside scene ``i``, 2 px from its corner."""
    x0 = 500000 + i * (SIZE + 1) * 10 + 20
    return (slice(x0, x0 + 40, 10.0), slice(5000000 - 60, 5000000 - 20, 10.0), ds.bounds[2])


def open_in(root: Path) -> list[str]:
    """File descriptors of this process open on files under ``root``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith(str(root)):
            found.append(f"{fd}:{target}")
    return sorted(found)


@pytest.fixture
def fd_limit() -> Iterator[None]:
    """Restore the process's soft descriptor limit after a test lowers it."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_every_file_read_stays_open_past_torchgeo_128(tmp_path: Path) -> None:
    # Before: TorchGeo's lru_cache kept 128 handles per process, so reading chips from 200
    # files left 128 open and every later chip from the others reopened its file.
    if open_file_budget() < 200:
        pytest.skip("the descriptor limit of this process keeps fewer than 200 files open")
    root = tmp_path / "catalog"
    pixels = write_catalog(root, 200)
    ds = MultiBandGeoTIFF(root)
    assert open_in(root) == []  # indexing closes what it checked
    first = [ds.raw_sample(chip(i, ds))["image"].numpy().copy() for i in range(200)]
    held = open_in(root)
    assert len(held) == 200
    again = [ds.raw_sample(chip(i, ds))["image"].numpy() for i in range(200)]
    assert open_in(root) == held  # the same descriptors: nothing was reopened
    for i in range(200):
        np.testing.assert_array_equal(first[i], pixels[i][:, 2:6, 2:6])
        np.testing.assert_array_equal(again[i], first[i])
    # TorchGeo's merge (float32 chips) reads through the same handles
    np.testing.assert_array_equal(ds[chip(7, ds)]["image"].numpy(), pixels[7][:, 2:6, 2:6])
    assert open_in(root) == held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_descriptor_limit_caps_the_open_files(tmp_path: Path, fd_limit: None) -> None:
    root = tmp_path / "catalog"
    pixels = write_catalog(root, 60)
    ds = MultiBandGeoTIFF(root)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = RESERVED_FDS + 40
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert open_file_budget() == 20 and open_file_budget(files=7) == 7
    for _ in range(2):
        for i in range(60):
            image = ds.raw_sample(chip(i, ds))["image"].numpy()
            np.testing.assert_array_equal(image, pixels[i][:, 2:6, 2:6])
            assert len(open_in(root)) <= 20
    assert len(open_in(root)) == 20


def test_least_recently_used_files_close_first(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write_catalog(root, 5)
    paths = sorted(str(p) for p in root.iterdir())
    closed: list[DatasetReader] = []

    def close(src: DatasetReader) -> None:
        closed.append(src)
        src.close()

    files = OpenFiles(3, rasterio.open, close)
    handles = [files[p] for p in paths[:3]]
    assert files[paths[0]] is handles[0]  # reading paths[0] again makes paths[1] the oldest
    files[paths[3]]
    assert closed == [handles[1]] and handles[1].closed and not handles[0].closed
    assert paths[1] not in files and paths[0] in files and len(files) == 3
    assert files.opens == 4 and files.evictions == 1
    files[paths[1]]  # reopened
    assert files.opens == 5 and closed[-1] is handles[2]
    files.close()
    assert len(files) == 0 and all(h.closed for h in handles)
    with pytest.raises(ValueError, match="at least 1"):
        OpenFiles(0, rasterio.open, close)


def test_footprint_grid_finds_what_a_scan_of_every_box_finds() -> None:
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 1000, (400, 2))
    size = rng.uniform(5, 60, (400, 2))
    boxes = np.concatenate([corner, corner + size], axis=1)
    # repeated footprints, a box spanning everything and boxes touching edge to edge
    boxes = np.concatenate(
        [boxes, boxes[:20], [[-50, -50, 1100, 1100]], [[0, 2000, 10, 2010], [10, 2000, 20, 2010]]]
    )
    grid = FootprintGrid(boxes)
    points = np.concatenate([rng.uniform(-100, 1200, (500, 2)), [[10, 2005], [20, 2005]]])
    x, y = points[:, 0], points[:, 1]
    inside = (
        (boxes[:, 0] <= x[:, None])
        & (x[:, None] < boxes[:, 2])
        & (boxes[:, 1] <= y[:, None])
        & (y[:, None] < boxes[:, 3])
    )
    expected = np.where(inside.any(1), inside.argmax(1), -1)
    np.testing.assert_array_equal(grid.containing(x, y), expected)
    for x0, y0 in [*rng.uniform(-100, 1200, (200, 2)).tolist(), [0.0, 2000.0], [10.0, 2002.0]]:
        w, h = rng.uniform(0, 80, 2)
        scan = np.flatnonzero(
            (boxes[:, 0] < x0 + w)
            & (boxes[:, 2] > x0)
            & (boxes[:, 1] < y0 + h)
            & (boxes[:, 3] > y0)
        )
        assert grid.overlapping(x0, y0, x0 + w, y0 + h) == scan.tolist()
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        FootprintGrid(np.zeros((0, 4)))
