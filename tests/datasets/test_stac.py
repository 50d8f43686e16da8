"""STACCatalog: index from metadata, bands by name, filters, remote reads from real servers."""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from geodino.datasets import Sentinel2, STACCatalog
from geodino.datasets.remote import RemoteSettings, gdal_path
from geodino.errors import ConfigError, DataError
from geodino.samplers import AOISampler
from geodino.seeding import torch_generator
from tests.servers import FaultProxy, RangeHTTPServer
from tests.stac_catalogs import Scene, two_zone_scenes, write_items

BANDS = ["B02", "red", "nir", "swir16"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Scene]]:
    root = tmp_path_factory.mktemp("stac")
    return root, two_zone_scenes(root / "cogs")


@pytest.fixture(scope="module")
def local(scenes: tuple[Path, list[Scene]]) -> Path:
    root, items = scenes
    return write_items(items, root / "local.parquet")


def queries(dataset: STACCatalog, n: int = 12, size: int = 24) -> list[tuple]:
    sampler = AOISampler(dataset, None, size, length=n, generator=torch_generator(3))
    return list(sampler)


def same_chips(a: STACCatalog, b: STACCatalog | Sentinel2, where: list[tuple]) -> None:
    for query in where:
        x, y, _ = query
        other = (x, y, slice(b.bounds[2].start, b.bounds[2].stop, 1))
        torch.testing.assert_close(a[query]["image"], b[other]["image"], rtol=0, atol=0)


def s3_catalog(
    scenes: tuple[Path, list[Scene]], s3_server, name: str, bucket: str = "geodino-cogs"
) -> Path:
    root, items = scenes

    def href(path: Path) -> str:
        key = f"{name}/{path.relative_to(root / 'cogs')}"
        return s3_server.upload(path, bucket, key)

    return write_items(items, root / f"{name}.parquet", href)


def remote(proxy_or_server, **settings) -> RemoteSettings:
    return RemoteSettings(
        endpoint=proxy_or_server.endpoint, https=False, virtual_hosting=False, **settings
    )


def test_index_is_built_from_metadata_alone(scenes: tuple[Path, list[Scene]]) -> None:
    root, items = scenes
    # every href points nowhere: indexing must not open any of them
    catalog = write_items(items, root / "nowhere.parquet", lambda p: f"/nowhere/{p.name}")
    dataset = STACCatalog(catalog, bands=BANDS)
    assert len(dataset.index) == 3
    assert dataset.crs.to_epsg() == 32631 and dataset.res == (10.0, 10.0)
    assert list(dataset.index["id"]) == ["S2A_31_a", "S2B_31_b", "S2A_32_c"]
    assert dataset.nodata == 0.0 and dataset.band_names == BANDS
    x, y, t = dataset.bounds
    query = (slice(x.start + 200, x.start + 440, 10), slice(y.stop - 440, y.stop - 200, 10), t)
    with pytest.raises(DataError, match=r"/nowhere/B02\.tif \(item S2A_31_a of .*nowhere"):
        dataset[query]


def test_chips_equal_the_per_band_sentinel2_source(
    scenes: tuple[Path, list[Scene]], local: Path
) -> None:
    root, _ = scenes
    dataset = STACCatalog(local, bands=BANDS)
    reference = Sentinel2(root / "cogs", bands=["B02", "B04", "B08", "B11"])
    assert reference.crs == dataset.crs and reference.res == dataset.res
    # one item per query (the two sources order overlapping items differently)
    boxes = dataset.index.geometry.bounds.to_numpy()
    single = []
    for query in queries(dataset, 40):
        x, y, _ = query
        inside = (
            (boxes[:, 0] < x.stop)
            & (boxes[:, 2] > x.start)
            & (boxes[:, 1] < y.stop)
            & (boxes[:, 3] > y.start)
        )
        if inside.sum() == 1:
            single.append(query)
    assert len(single) >= 8
    same_chips(dataset, reference, single)


def test_items_in_another_utm_zone_are_warped_into_the_index(local: Path) -> None:
    dataset = STACCatalog(local, bands=["red"])
    zone32 = dataset.index.geometry.iloc[2]
    # the 32N item lies east of the 31N items once warped, its grid edges bent by the warp
    assert zone32.bounds[0] > dataset.index.geometry.iloc[0].bounds[0]
    assert len(zone32.exterior.coords) > 5
    same_zone = STACCatalog(local, bands=["red"], crs="EPSG:32632")
    assert same_zone.crs.to_epsg() == 32632
    assert len(same_zone.index.geometry.iloc[2].exterior.coords) == 5


def test_bands_by_asset_key_name_and_common_name(local: Path) -> None:
    by_name = STACCatalog(local, bands=["B04", "B08"])
    by_common = STACCatalog(local, bands=["red", "nir"])
    assert [(b.asset, b.index) for b in by_name.band_assets] == [("red", 1), ("nir", 1)]
    assert by_name.band_assets[0].asset == by_common.band_assets[0].asset
    # all GeoTIFF data assets by default; the thumbnail is not one
    assert STACCatalog(local).band_names == ["B02", "B04", "B08", "B11"]
    with pytest.raises(DataError, match=r"band 'B99' is in no asset.*'B04'.*'red'"):
        STACCatalog(local, bands=["B99"])
    # a 10 m-only selection reads without resampling
    assert STACCatalog(local, bands=["red", "nir"]).resampling.name == "nearest"
    assert STACCatalog(local, bands=["red", "swir16"]).resampling.name == "bilinear"


def test_filters_on_cloud_cover_dates_and_properties(local: Path) -> None:
    assert len(STACCatalog(local, bands=["red"], max_cloud_cover=20).index) == 2
    assert list(STACCatalog(local, bands=["red"], start="2024-06-10").index["id"]) == [
        "S2B_31_b",
        "S2A_32_c",
    ]
    assert list(STACCatalog(local, bands=["red"], end="2024-06-01T00:00:00Z").index["id"]) == [
        "S2A_31_a"
    ]
    picked = STACCatalog(local, bands=["red"], query="platform == 'sentinel-2b'")
    assert list(picked.index["id"]) == ["S2B_31_b"]
    ranged = STACCatalog(local, bands=["red"], query="`eo:cloud_cover` < 8")
    assert list(ranged.index["id"]) == ["S2A_31_a"]
    with pytest.raises(DataError, match=r"query 'nonsense ==' cannot be evaluated.*platform"):
        STACCatalog(local, bands=["red"], query="nonsense ==")
    with pytest.raises(DataError, match=r"no item .* passes the filters"):
        STACCatalog(local, bands=["red"], max_cloud_cover=1)
    with pytest.raises(DataError, match="ISO 8601"):
        STACCatalog(local, bands=["red"], start="June")


def test_item_collection_json_indexes_like_geoparquet(
    scenes: tuple[Path, list[Scene]], local: Path
) -> None:
    root, items = scenes
    collection = write_items(items, root / "items.json")
    a, b = STACCatalog(collection, bands=BANDS), STACCatalog(local, bands=BANDS)
    assert a.index.geometry.equals(b.index.geometry)
    assert (a.index.index == b.index.index).all()
    same_chips(a, b, queries(b, 4))


def test_items_without_a_band_or_a_grid_are_named(
    scenes: tuple[Path, list[Scene]], local: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = pq.read_table(local).to_pylist()
    del table[1]["assets"]["nir"]
    table[2]["assets"]["red"]["proj:transform"] = None
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(table), broken)
    with pytest.raises(DataError, match=r"1 item\(s\) of .* has no asset 'nir'.*S2B_31_b"):
        STACCatalog(broken, bands=["nir", "red"])
    with caplog.at_level(logging.WARNING):
        kept = STACCatalog(broken, bands=["red", "nir"], on_unreadable="warn")
    assert list(kept.index["id"]) == ["S2A_31_a"]
    assert "proj:transform" in caplog.text and "S2A_32_c" in caplog.text
    with pytest.raises(DataError, match=r"does not exist.*geodino catalog"):
        STACCatalog(tmp_path / "missing.parquet")


def test_hrefs_map_to_gdal_paths() -> None:
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    assert gdal_path("https://host/x/b.tif") == "/vsicurl/https://host/x/b.tif"
    assert gdal_path("file:///data/b.tif") == "/data/b.tif"
    assert gdal_path("b.tif", "/data/cat") == "/data/cat/b.tif"
    assert gdal_path("b.tif", "s3://bucket/cat") == "/vsis3/bucket/cat/b.tif"
    assert gdal_path("/vsizip/a.zip/b.tif") == "/vsizip/a.zip/b.tif"
    with pytest.raises(ConfigError, match="ftp"):
        gdal_path("ftp://host/b.tif")


def test_remote_settings_refuse_credentials() -> None:
    with pytest.raises(ConfigError, match=r"AWS_SECRET_ACCESS_KEY.*environment"):
        RemoteSettings(options={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ConfigError, match="without a scheme"):
        RemoteSettings(endpoint="http://minio:9000")
    options = RemoteSettings(endpoint="minio:9000", https=False).gdal_options()
    assert options["AWS_S3_ENDPOINT"] == "minio:9000" and options["AWS_HTTPS"] == "NO"
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


def test_s3_chips_equal_local_chips_pixel_for_pixel(
    scenes: tuple[Path, list[Scene]], local: Path, s3_server
) -> None:
    catalog = s3_catalog(scenes, s3_server, "exact")
    assert pq.read_table(catalog).to_pylist()[0]["assets"]["red"]["href"].startswith("s3://")
    from_s3 = STACCatalog(catalog, bands=BANDS, remote=remote(s3_server))
    from_disk = STACCatalog(local, bands=BANDS)
    same_chips(from_s3, from_disk, queries(from_disk, 16))


def test_http_chips_equal_local_chips(scenes: tuple[Path, list[Scene]], local: Path) -> None:
    root, items = scenes
    with RangeHTTPServer(root / "cogs") as server, FaultProxy(server.port) as proxy:
        catalog = write_items(
            items,
            root / "http.parquet",
            lambda p: f"{proxy.url}/{p.relative_to(root / 'cogs')}",
        )
        from_http = STACCatalog(catalog, bands=BANDS, remote=RemoteSettings())
        same_chips(from_http, STACCatalog(local, bands=BANDS), queries(from_http, 6))
        # COG settings: no directory listing, no side-car probing
        assert proxy.count(".aux.xml") == 0 and proxy.count(".msk") == 0
        assert proxy.count("/?") == 0 and proxy.count("S2A_31_a/", "GET") > 0


def first_query(dataset: STACCatalog) -> tuple:
    x, y, t = dataset.bounds
    return (slice(x.start + 200, x.start + 440, 10), slice(y.stop - 440, y.stop - 200, 10), t)


def test_transient_503s_are_retried(
    scenes: tuple[Path, list[Scene]], local: Path, s3_server, s3_proxy
) -> None:
    catalog = s3_catalog(scenes, s3_server, "flaky")
    dataset = STACCatalog(
        catalog, bands=BANDS, remote=remote(s3_proxy, max_retry=3, retry_delay=0.05)
    )
    fault = s3_proxy.fail("flaky/S2A_31_a/B04.tif", status=503, times=2)
    query = first_query(dataset)
    expected = STACCatalog(local, bands=BANDS)[query]["image"]
    torch.testing.assert_close(dataset[query]["image"], expected, rtol=0, atol=0)
    assert fault.hits == 2


def test_a_stall_past_the_timeout_is_retried(
    scenes: tuple[Path, list[Scene]], local: Path, s3_server, s3_proxy
) -> None:
    catalog = s3_catalog(scenes, s3_server, "stall")
    settings = remote(s3_proxy, timeout=1, max_retry=2, retry_delay=0.05, read_attempts=3)
    dataset = STACCatalog(catalog, bands=BANDS, remote=settings)
    fault = s3_proxy.fail("stall/S2A_31_a/B08.tif", stall=2.5, times=1)
    query = first_query(dataset)
    expected = STACCatalog(local, bands=BANDS)[query]["image"]
    torch.testing.assert_close(dataset[query]["image"], expected, rtol=0, atol=0)
    assert fault.hits == 1


def test_a_server_that_keeps_failing_is_named_with_the_fix(
    scenes: tuple[Path, list[Scene]], s3_server, s3_proxy
) -> None:
    catalog = s3_catalog(scenes, s3_server, "down")
    settings = remote(s3_proxy, max_retry=1, retry_delay=0.01, read_attempts=2)
    dataset = STACCatalog(catalog, bands=BANDS, remote=settings)
    s3_proxy.fail("down/S2A_31_a/B02.tif", status=503)
    with pytest.raises(
        DataError, match=r"s3://geodino-cogs/down/S2A_31_a/B02\.tif \(item S2A_31_a.*retries"
    ):
        dataset[first_query(dataset)]


def test_an_object_deleted_mid_run_is_named(
    scenes: tuple[Path, list[Scene]], s3_server, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = s3_catalog(scenes, s3_server, "deleted")
    settings = remote(s3_server, max_retry=1, retry_delay=0.01)
    dataset = STACCatalog(catalog, bands=BANDS, remote=settings)
    query = first_query(dataset)
    dataset[query]
    s3_server.delete("geodino-cogs", "deleted/S2B_31_b/B11.tif")
    x, y, t = dataset.bounds
    # a chip of the second item, whose 20 m band was never opened
    later = (slice(x.start + 900, x.start + 1140, 10), slice(y.stop - 1500, y.stop - 1260, 10), t)
    with pytest.raises(DataError, match=r"deleted/S2B_31_b/B11\.tif .* gone"):
        dataset[later]
    lenient = STACCatalog(catalog, bands=BANDS, remote=settings, on_unreadable="warn")
    with caplog.at_level(logging.WARNING):
        lenient[later]
    assert "deleted/S2B_31_b/B11.tif" in caplog.text
    assert lenient.unreadable == ["s3://geodino-cogs/deleted/S2B_31_b/B11.tif"]


def test_a_truncated_object_is_named(
    scenes: tuple[Path, list[Scene]], s3_server, tmp_path: Path
) -> None:
    _, items = scenes
    catalog = s3_catalog(scenes, s3_server, "cut")
    data = items[0].files["nir"].read_bytes()
    s3_server.put_bytes(data[: len(data) // 2], "geodino-cogs", "cut/S2A_31_a/B08.tif")
    dataset = STACCatalog(catalog, bands=BANDS, remote=remote(s3_server, max_retry=0))
    x, y, t = dataset.bounds
    # the last rows of the item: blocks past the cut
    query = (slice(x.start + 400, x.start + 640, 10), slice(y.stop - 1280, y.stop - 1040, 10), t)
    with pytest.raises(DataError, match=r"cut/S2A_31_a/B08\.tif .*(damaged|truncated)"):
        dataset[query]


def test_loader_workers_read_the_same_chips(local: Path) -> None:
    from geodino.datamodules import GeoDINODataModule

    def batches(dataset: STACCatalog, workers: int) -> list[np.ndarray]:
        module = GeoDINODataModule(
            dataset, chip_size=16, batch_size=4, num_workers=workers, seed=5, statistics_chips=8
        )
        module.setup("fit")
        loader = module.train_dataloader()
        out = []
        for batch in loader:
            out.append(batch["image"].numpy())
            if len(out) == 3:
                break
        return out

    dataset = STACCatalog(local, bands=BANDS)
    for a, b in zip(batches(dataset, 0), batches(dataset, 2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_overlapping_items_read_one_by_one_give_rasterio_merge_of_all(
    scenes: tuple[Path, list[Scene]], local: Path
) -> None:
    import rasterio
    import rasterio.merge

    _, items = scenes
    dataset = STACCatalog(local, bands=BANDS)
    # chips across the overlap of the two 31N items, partly outside the first one
    x0, y0 = 735000.0 + 1000, 4985000.0 - 1000
    for dx in (0, 120, 240):
        x = slice(x0 + dx, x0 + dx + 400, 10)
        y = slice(y0 - 400, y0, 10)
        got = dataset[(x, y, dataset.bounds[2])]["image"]
        for channel, (key, _) in enumerate(
            zip(["blue", "red", "nir", "swir16"], BANDS, strict=True)
        ):
            files = [rasterio.open(s.files[key]) for s in items[:2]]
            want, _ = rasterio.merge.merge(
                files,
                bounds=(x.start, y.start, x.stop, y.stop),
                res=(10, 10),
                resampling=dataset.resampling,
            )
            for f in files:
                f.close()
            np.testing.assert_array_equal(got[channel].numpy(), want[0].astype("float32"))
        assert (got == 0).float().mean() < 0.5


def test_geodino_catalog_writes_a_search_as_stac_geoparquet(
    scenes: tuple[Path, list[Scene]], local: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.servers import STACAPIServer
    from tests.stac_catalogs import features

    _, items = scenes
    with STACAPIServer(features(items)) as api:
        out = tmp_path / "search.parquet"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "geodino",
                "catalog",
                api.url,
                "--out",
                str(out),
                "--collections",
                "sentinel-2-l2a",
                "--bbox",
                "5",
                "40",
                "8",
                "50",
                "--max_cloud_cover",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 items" in run.stdout
        assert api.searches >= 1
        again = subprocess.run(
            [sys.executable, "-m", "geodino", "catalog", api.url, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 2 and "--overwrite" in again.stderr
    table = pq.read_table(out)
    assert table.schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert b"geo" in table.schema.metadata
    searched = STACCatalog(out, bands=BANDS)
    assert list(searched.index["id"]) == ["S2A_31_a", "S2A_32_c"]
    reference = STACCatalog(local, bands=BANDS, max_cloud_cover=30)
    assert searched.index.geometry.equals(reference.index.geometry)
    same_chips(searched, reference, queries(reference, 4))


def test_the_search_pages_through_the_api(scenes: tuple[Path, list[Scene]]) -> None:
    from geodino.stac_search import search_items
    from tests.servers import STACAPIServer
    from tests.stac_catalogs import features

    _, items = scenes
    many = [dict(f, id=f"{f['id']}_{i}") for i in range(7) for f in features(items)]
    with STACAPIServer(many) as api:
        found = list(search_items(api.url, ["sentinel-2-l2a"], limit=4))
        assert len(found) == 21 and api.searches == 6
        assert len(list(search_items(api.url, max_items=5, limit=4))) == 5
    with pytest.raises(ConfigError, match=r"cannot be searched.*root"):
        list(search_items(api.url))


def test_concurrent_reads_overlap_the_band_files_of_a_chip(
    scenes: tuple[Path, list[Scene]], local: Path, s3_server
) -> None:
    """With ``concurrent_reads`` the four band files of a chip are read in parallel threads."""
    from_disk = STACCatalog(local, bands=BANDS)
    where = queries(from_disk, 1, size=8)
    with FaultProxy(s3_server.port) as proxy:
        overlap, requests = {}, {}
        for threads in (1, 4):
            # objects of their own: GDAL keeps the ranges it read per process
            catalog = s3_catalog(scenes, s3_server, f"threads{threads}")
            dataset = STACCatalog(
                catalog, bands=BANDS, remote=remote(proxy, concurrent_reads=threads)
            )
            proxy.latency = 0.0
            dataset[first_query(dataset)]  # opens every band file of the first item
            proxy.clear()
            # long enough that threads reading at once are seen at once by the proxy
            proxy.latency = 0.3
            same_chips(dataset, from_disk, where)
            overlap[threads] = proxy.max_in_flight
            requests[threads] = proxy.count(method="GET")
    # one band file after another, a chip's requests wait for each other (GDAL overlaps
    # only the ranges of one file); in threads the files' requests are in flight together
    assert min(requests.values()) >= 4
    assert overlap[4] >= 3 and overlap[4] > overlap[1], overlap


def test_concurrent_reads_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="concurrent_reads must be >= 1"):
        RemoteSettings(concurrent_reads=0)


def test_block_aligned_chips_take_the_tiling_from_the_index_and_one_read(
    scenes: tuple[Path, list[Scene]],
) -> None:
    import rasterio

    root, items = scenes
    # only the first item's files exist: the tiling must not open the others
    catalog = write_items(
        items,
        root / "aligned.parquet",
        lambda p: str(p) if p.parent.name == items[0].id else f"/nowhere/{p.name}",
    )
    dataset = STACCatalog(catalog, bands=BANDS)
    expected = []
    for scene in items[:2]:  # the 32N item is warped: it has no tiling on the dataset's grid
        with rasterio.open(scene.files["blue"]) as src:
            t, (block_h, block_w) = src.transform, src.block_shapes[0]
            left, bottom, right, top = src.bounds
            expected.append((left, bottom, right, top, t.c, t.f, src.width, src.height))
            expected[-1] += (block_w, block_h)
    np.testing.assert_allclose(dataset.block_grids(dataset.res), expected)
    sampler = AOISampler(
        dataset, None, 24, length=60, block_aligned=True, generator=torch_generator(0)
    )
    grid = expected[0]
    aligned = 0
    for x, y, _ in sampler:
        centre = ((x.start + x.stop) / 2, (y.start + y.stop) / 2)
        if not (grid[0] <= centre[0] < grid[2] and grid[1] <= centre[1] < grid[3]):
            continue
        col, row = round((x.start - grid[4]) / 10), round((grid[5] - y.stop) / 10)
        # a 24-px chip inside one 32-px block of the first item's COGs
        assert col % 32 + 24 <= 32 and row % 32 + 24 <= 32
        aligned += 1
    assert aligned >= 10


def test_items_under_a_chip_are_found_among_distinct_footprints(local: Path) -> None:
    import pandas as pd
    import shapely

    dataset = STACCatalog(local, bands=BANDS)
    index = dataset.index
    x, y, t = dataset.bounds
    rng = np.random.default_rng(0)
    mid = t.start + (t.stop - t.start) / 2
    spans = [t, slice(t.start, mid, 1), slice(mid, t.stop, 1), slice(t.stop, t.stop, 1)]
    found = 0
    for _ in range(200):
        x0, y0 = rng.uniform(x.start - 500, x.stop), rng.uniform(y.start - 500, y.stop)
        size = rng.choice([80.0, 640.0, 2000.0])
        span = spans[rng.integers(len(spans))]
        chip = shapely.box(x0, y0, x0 + size, y0 + size)
        # every item's own footprint and time span, tested one by one
        shares = shapely.intersects(index.geometry.array, chip) & ~shapely.touches(
            index.geometry.array, chip
        )
        overlaps = index.index.overlaps(pd.Interval(span.start, span.stop, closed="both"))
        expected = np.flatnonzero(shares & overlaps)
        rows = dataset._rows(slice(x0, x0 + size, 10.0), slice(y0, y0 + size, 10.0), span)
        np.testing.assert_array_equal(rows, expected)
        found += len(rows) > 0
    assert found > 20
