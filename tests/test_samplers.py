"""AOISampler on real GeoTIFFs in two UTM zones, with AOIs written to disk in EPSG:4326."""

import logging
import pickle
import re
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin
from scipy.stats import chisquare
from torchgeo.datasets import RasterDataset
from torchgeo.samplers import RandomGeoSampler, Units

from geodino.datasets import MultiBandGeoTIFF
from geodino.errors import DataError
from geodino.samplers import AOISampler, read_aoi

RES = 10.0
#: Slack for chips "entirely inside": AOI vertices move ~1e-9 m in a CRS round trip.
TOL = 1e-6


class Tiles(RasterDataset):
    """Plain TorchGeo raster dataset over the test GeoTIFFs."""

    filename_glob = "*.tif"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 5 km scenes in UTM 31N and one in UTM 32N, around 6 deg E (a.tif sets the CRS)."""
    root = tmp_path_factory.mktemp("utm")
    rng = np.random.default_rng(0)
    for name, epsg, x0, y0 in (
        ("a", 32631, 716000, 4990000),
        ("b", 32631, 716000, 4985000),
        ("c", 32632, 276000, 4990000),
    ):
        data = rng.integers(1, 500, (2, 500, 500)).astype("uint16")
        with rasterio.open(
            root / f"{name}.tif",
            "w",
            driver="GTiff",
            height=500,
            width=500,
            count=2,
            dtype="uint16",
            crs=f"EPSG:{epsg}",
            nodata=0,
            transform=from_origin(x0, y0, RES, RES),
        ) as dst:
            dst.write(data)
    return root


@pytest.fixture(scope="module")
def ds(root: Path) -> Tiles:
    return Tiles(root)


def footprint(ds: RasterDataset) -> shapely.Geometry:
    return shapely.union_all(ds.index.geometry.to_numpy())


def scene(ds: RasterDataset, name: str) -> shapely.Geometry:
    rows = [p.endswith(f"{name}.tif") for p in ds.index.filepath]
    return ds.index.geometry[rows].iloc[0]


def aoi_frame(ds: RasterDataset) -> gpd.GeoDataFrame:
    """A two-zone MultiPolygon (a triangle and a box), a ring with a hole, and an island in it."""
    b, c, a = scene(ds, "b"), scene(ds, "c"), scene(ds, "a")
    bx0, by0, bx1, by1 = b.buffer(-300).bounds
    triangle = shapely.Polygon([(bx0, by0), (bx1, by0), (bx0, by1)])
    east = shapely.box(*c.buffer(-700).bounds)
    island = shapely.box(*a.buffer(-2100).bounds)
    ring = shapely.box(*a.buffer(-400).bounds).difference(island.buffer(400, join_style="mitre"))
    return gpd.GeoDataFrame(
        {
            "name": ["two_zones", "ring", "island"],
            "split": ["train", "train", "val"],
            "w": [1.0, 3.0, 1.0],
        },
        geometry=[shapely.MultiPolygon([triangle, east]), ring, island],
        crs=ds.crs,
    )


def write_aoi(ds: RasterDataset, path: Path, driver: str = "GPKG") -> Path:
    aoi_frame(ds).to_crs(4326).to_file(path, driver=driver)
    return path


def truth(ds: RasterDataset, path: Path) -> list[shapely.Geometry]:
    """The AOI polygons inside the data, computed here independently of the sampler."""
    polygons = gpd.read_file(path).to_crs(ds.crs).geometry.to_numpy()
    return list(shapely.intersection(polygons, footprint(ds)))


def box_of(query: tuple[slice, slice, slice]) -> shapely.Polygon:
    x, y, _ = query
    return shapely.box(x.start, y.start, x.stop, y.stop)


def test_1000_chips_lie_inside_the_aoi_and_follow_the_areas(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    regions = truth(ds, path)
    union = shapely.union_all(regions)
    sampler = AOISampler(ds, path, 32, generator=torch.Generator().manual_seed(0))
    counts = np.zeros(3)
    for i in range(1000):
        box, row = box_of(sampler.sample(i)), sampler.polygon_of(i)
        assert shapely.area(shapely.intersection(box, union)) / box.area >= 1 - TOL
        assert regions[row].buffer(RES).contains(box.centroid)
        counts[row] += 1
    areas = np.array([r.area for r in regions])
    assert chisquare(counts, 1000 * areas / areas.sum()).pvalue > 0.001
    assert chisquare(counts, np.full(3, 1000 / 3)).pvalue < 1e-6  # equal weights are rejected
    assert list(sampler.aoi["weight"]) == pytest.approx(list(areas), rel=1e-6)
    assert len(sampler) == int(union.area / (320 * 320))


def test_partial_coverage_allows_chips_over_the_border(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.geojson", driver="GeoJSON")
    union = shapely.union_all(truth(ds, path))
    sampler = AOISampler(
        ds, path, 48, min_coverage=0.6, length=300, generator=torch.Generator().manual_seed(2)
    )
    covered = [
        shapely.area(shapely.intersection(box_of(q), union)) / box_of(q).area for q in sampler
    ]
    assert min(covered) >= 0.6 - 1e-9
    assert sum(c < 1 - 1e-9 for c in covered) > 10


def test_weight_column_sets_the_proportions(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.shp", driver="ESRI Shapefile")
    sampler = AOISampler(
        ds, path, 16, weight_column="w", generator=torch.Generator().manual_seed(1)
    )
    counts = np.bincount([sampler.polygon_of(i) for i in range(1000)], minlength=3)
    assert chisquare(counts, 1000 * np.array([1, 3, 1]) / 5).pvalue > 0.001
    areas = np.array([r.area for r in truth(ds, path)])
    assert chisquare(counts, 1000 * areas / areas.sum()).pvalue < 1e-6
    assert list(sampler.aoi["weight"]) == [1.0, 3.0, 1.0]


def test_query_selects_rows(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    sampler = AOISampler(
        ds, path, 16, length=50, query="split == 'val'", generator=torch.Generator().manual_seed(0)
    )
    assert list(sampler.aoi["name"]) == ["island"]
    island = truth(ds, path)[2]
    assert all(island.buffer(2 * TOL * RES).contains(box_of(q)) for q in sampler)


def test_chips_are_reproducible_per_index(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")

    def make(seed: int) -> AOISampler:
        return AOISampler(ds, path, 24, length=20, generator=torch.Generator().manual_seed(seed))

    a, b = make(3), make(3)
    late = b.sample(777)  # drawn first, without the earlier chips
    first = list(a)
    assert first == [b.sample(i) for i in range(20)] and a.sample(777) == late
    second = list(a)
    assert second != first and second == [b.sample(20 + i) for i in range(20)]
    assert a.sample(5, attempt=1) != a.sample(5) and a.sample(5, 1) == b.sample(5, 1)
    assert [make(4).sample(i) for i in range(20)] != first
    clone = pickle.loads(pickle.dumps(a))  # as a loader worker receives it
    assert [clone.sample(i) for i in range(20)] == first
    torch.manual_seed(11)
    c = AOISampler(ds, path, 24)
    torch.manual_seed(11)
    assert AOISampler(ds, path, 24).seed == c.seed


@pytest.mark.parametrize("options", [{}, {"min_coverage": 0.5}, {"block_aligned": True}])
def test_first_candidate_shortcut_draws_the_chips_of_the_full_batch(
    ds: Tiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict
) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    g = torch.Generator().manual_seed(5)
    sampler = AOISampler(ds, path, 24, generator=g, **options)
    fast = [(sampler.sample(i, i % 3), sampler.polygon_of(i)) for i in range(300)]
    monkeypatch.setattr(AOISampler, "_first", lambda self, *args: None)
    assert [(sampler.sample(i, i % 3), sampler.polygon_of(i)) for i in range(300)] == fast


@pytest.mark.parametrize("size", [24, (16, 40)])
def test_chips_are_pixel_aligned_and_read_at_size(
    ds: Tiles, root: Path, size: int | tuple[int, int]
) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    xmin, ymin = ds.bounds[0].start, ds.bounds[1].start
    random = AOISampler(ds, None, size, length=12, generator=torch.Generator().manual_seed(5))
    grid = AOISampler(ds, None, size, stride=(100, 170))
    geodino_ds = MultiBandGeoTIFF(root)
    for query in [*random, *list(grid)[:12]]:
        x, y, _ = query
        for edge, origin in ((x.start, xmin), (x.stop, xmin), (y.start, ymin), (y.stop, ymin)):
            assert (edge - origin) / RES == pytest.approx(round((edge - origin) / RES), abs=1e-6)
        assert ds[query]["image"].shape == (2, h, w)
        assert geodino_ds[query]["image"].shape == (2, h, w)


def test_sizes_in_crs_units_are_whole_pixels(ds: Tiles) -> None:
    sampler = AOISampler(
        ds, None, 323.0, units=Units.CRS, length=4, generator=torch.Generator().manual_seed(0)
    )
    x, y, _ = sampler.sample(0)
    assert (x.stop - x.start, y.stop - y.start) == (320.0, 320.0)
    assert ds[sampler.sample(1)]["image"].shape == (2, 32, 32)


def test_grid_covers_the_aoi_and_every_chip_meets_the_coverage(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    union = shapely.union_all(truth(ds, path))
    chip = 32 * RES
    grid = AOISampler(ds, path, 32, stride=32)
    boxes = [box_of(q) for q in grid]
    assert len(boxes) == len(grid) > 100
    assert [box_of(q) for q in grid] == boxes  # the grid is fixed
    assert all(shapely.area(shapely.intersection(b, union)) / b.area >= 1 - TOL for b in boxes)
    # every point farther than a chip diagonal from the border lies in a chip
    interior = union.buffer(-chip * np.sqrt(2) - RES)
    assert interior.area > 0 and shapely.union_all(boxes).contains(interior)
    tops = [b.bounds[1] for b in boxes]
    assert tops == sorted(tops, reverse=True)  # north to south
    # overlapping chips that may leave the AOI cover all of it
    loose = AOISampler(ds, path, 32, stride=16, min_coverage=1e-6)
    assert all(loose.coverage(q) > 0 for q in loose)
    assert union.difference(shapely.union_all([box_of(q) for q in loose])).area < 1e-3
    assert len(loose) > 4 * len(grid)
    assert loose.aoi.iloc[loose.polygon_of(0)]["name"] in {"two_zones", "ring", "island"}


def test_torchgeo_random_sampler_leaks_outside_the_polygon(ds: Tiles, tmp_path: Path) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    union = shapely.union_all(truth(ds, path))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stock = RandomGeoSampler(
            ds, 32, length=300, roi=union, generator=torch.Generator().manual_seed(0)
        )
        inside = sum(union.buffer(2 * TOL * RES).contains(box_of(q)) for q in stock)
    assert inside < 0.8 * 300  # the hole: TorchGeo only clips the file index to the AOI
    ours = AOISampler(ds, path, 32, length=300, generator=torch.Generator().manual_seed(0))
    assert all(union.buffer(2 * TOL * RES).contains(box_of(q)) for q in ours)


def test_bad_aoi_files(ds: Tiles, tmp_path: Path) -> None:
    utm = gpd.GeoDataFrame(geometry=[scene(ds, "a").buffer(-500)])
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        utm.to_file(tmp_path / "nocrs.shp")
    with pytest.raises(DataError, match=r"nocrs.shp has no CRS; set it in QGIS \(Layer > Set CRS"):
        read_aoi(tmp_path / "nocrs.shp")
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        utm.to_file(tmp_path / "nocrs.geojson", driver="GeoJSON")  # read back as EPSG:4326
    with pytest.raises(DataError, match=r"nocrs.geojson is in EPSG:4326 but .* not longitudes"):
        AOISampler(ds, tmp_path / "nocrs.geojson", 16)
    with pytest.raises(DataError, match=r"missing.gpkg does not exist; check the path"):
        read_aoi(tmp_path / "missing.gpkg")
    (tmp_path / "junk.gpkg").write_text("not a geopackage")
    with pytest.raises(DataError, match=r"junk.gpkg cannot be read as vector data"):
        read_aoi(tmp_path / "junk.gpkg")
    lines = gpd.GeoDataFrame(geometry=[shapely.LineString([(6, 45), (6.1, 45.1)])], crs=4326)
    with pytest.raises(DataError, match="holds no polygons"):
        read_aoi(lines)
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    with pytest.raises(DataError, match=r"split == 'test'. selects no row of AOI file .*gpkg"):
        read_aoi(path, query="split == 'test'")
    with pytest.raises(DataError, match=r"failed on .*gpkg.*columns are \['name', 'split', 'w'\]"):
        read_aoi(path, query="kind == 'x'")
    with pytest.raises(DataError, match="no aoi was given"):
        AOISampler(ds, None, 16, query="split == 'val'")


def test_aoi_outside_the_data(ds: Tiles) -> None:
    far = gpd.GeoDataFrame(geometry=[shapely.box(-70, -10, -69, -9)], crs=4326)
    with pytest.raises(DataError) as error:
        AOISampler(ds, far, 32)
    message = str(error.value)
    assert "does not intersect the data" in message and "EPSG:32631" in message
    xmin, ymin, xmax, ymax = footprint(ds).bounds
    assert f"data bounds ({xmin:.1f}, {ymin:.1f}, {xmax:.1f}, {ymax:.1f})" in message


def test_chips_that_fit_no_polygon(
    ds: Tiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_aoi(ds, tmp_path / "aoi.gpkg")
    with pytest.raises(
        DataError,
        match=r"chip of 400 x 400 px .* larger than every polygon.*"
        r"the largest, in row 0 \(name 'two_zones'\), spans 39\d\d x 39\d\d metres",
    ):
        AOISampler(ds, path, 400)
    with pytest.raises(DataError, match=r"larger than every polygon .*min_coverage 0.5"):
        AOISampler(ds, path, 1000, min_coverage=0.5)
    with pytest.raises(DataError, match=r"no grid chip \(a chip of 1000 x 1000 px"):
        AOISampler(ds, path, 1000, stride=500)
    # the island (0.8 km) takes no 100-px (1 km) chip while the others (1.3 km and wider) do:
    # it gets no chips, and a warning says so
    with caplog.at_level(logging.WARNING, logger="geodino.samplers"):
        sampler = AOISampler(ds, path, 100, length=40, generator=torch.Generator().manual_seed(0))
    assert re.search(r"fits in no place of 1 polygons.*row 2 \(name 'island'\)", caplog.text)
    assert list(sampler.aoi["weight"] > 0) == [True, True, False]
    assert {sampler.polygon_of(i) for i in range(40)} == {0, 1}
    assert all(sampler.coverage(q) >= 1 - TOL for q in sampler)
    caplog.clear()
    # a thin diagonal strip: large enough in area, yet no chip is 90 % inside
    x0, y0, x1, y1 = scene(ds, "a").buffer(-300).bounds
    strip = gpd.GeoDataFrame(
        {"name": ["strip"]},
        crs=ds.crs,
        geometry=[shapely.LineString([(x0, y0), (x1, y1)]).buffer(30)],
    )
    sampler = AOISampler(
        ds, strip, 20, min_coverage=0.9, max_tries=30, generator=torch.Generator().manual_seed(0)
    )
    with pytest.raises(DataError, match=r"row 0 \(name 'strip'\) .* after 30 tries.*min_coverage"):
        sampler.sample(0)
    far = gpd.GeoDataFrame({"name": ["far"]}, geometry=[shapely.box(0, 0, 1e3, 1e3)], crs=ds.crs)
    outside = pd.concat([aoi_frame(ds), far], ignore_index=True)
    with caplog.at_level(logging.WARNING, logger="geodino.samplers"):
        AOISampler(ds, outside, 16)
    assert "1 polygons lie outside the data" in caplog.text and "'far'" in caplog.text


def test_bad_weights_and_parameters(ds: Tiles) -> None:
    frame = aoi_frame(ds)
    with pytest.raises(DataError, match=r"weight_column 'area' is not a column .*'split', 'w'"):
        AOISampler(ds, frame, 16, weight_column="area")
    for value in (-1.0, float("nan")):
        bad = frame.copy()
        bad.loc[1, "w"] = value
        with pytest.raises(DataError, match=r"negative, missing .* at row 1 \(name 'ring'\)"):
            AOISampler(ds, bad, 16, weight_column="w")
    zero = frame.assign(w=0.0)
    with pytest.raises(DataError, match="is 0 for every polygon"):
        AOISampler(ds, zero, 16, weight_column="w")
    for kwargs, pattern in (
        ({"min_coverage": 0.0}, r"min_coverage must lie in \(0, 1\], got 0.0"),
        ({"min_coverage": 1.5}, r"min_coverage must lie in \(0, 1\], got 1.5"),
        ({"size": -4}, "chip size must be positive, got -4"),
        ({"size": 0}, "chip size must be positive, got 0"),
        ({"size": 0.2}, "smaller than a pixel"),
        ({"stride": 0}, "chip stride must be positive, got 0"),
        ({"stride": (16, -1)}, "chip stride must be positive"),
        ({"length": 0}, "length must be a positive number"),
        ({"stride": 16, "length": 5}, "length is set by the grid"),
    ):
        with pytest.raises(DataError, match=pattern):
            AOISampler(ds, frame, **{"size": 16, **kwargs})
    grid = AOISampler(ds, frame, 16, stride=16)
    with pytest.raises(DataError, match="attempt must be 0 in grid mode"):
        grid.sample(0, attempt=1)


def test_invalid_and_empty_geometries_are_repaired_or_dropped(
    ds: Tiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x0, y0, x1, y1 = scene(ds, "a").buffer(-500).bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    frame = gpd.GeoDataFrame(
        {"name": ["bowtie", "empty", "point"]},
        crs=ds.crs,
        geometry=[bowtie, shapely.Polygon(), shapely.Point(x0, y0)],
    )
    frame.to_crs(4326).to_file(tmp_path / "bowtie.gpkg")
    with caplog.at_level(logging.WARNING, logger="geodino.samplers"):
        aoi = read_aoi(tmp_path / "bowtie.gpkg", crs=ds.crs)
    assert "repaired 1 invalid geometries" in caplog.text
    assert "dropped 2 empty or non-polygon geometries" in caplog.text
    assert list(aoi["name"]) == ["bowtie"] and aoi.geometry.iloc[0].is_valid
    repaired = shapely.make_valid(bowtie)
    assert aoi.geometry.iloc[0].area == pytest.approx(repaired.area, rel=1e-3)
    sampler = AOISampler(
        ds, tmp_path / "bowtie.gpkg", 16, length=100, generator=torch.Generator().manual_seed(0)
    )
    assert all(sampler.coverage(q) >= 1 - TOL for q in sampler)
    assert all(repaired.buffer(RES).contains(box_of(q)) for q in sampler)


def test_the_aoi_guide_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "aoi.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", guide, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/aoi.md", "exec"), {})
    assert (tmp_path / "fields.gpkg").is_file()


def write_tiled(path: Path, size: int, block: int, crs: str, origin: tuple[float, float]) -> None:
    data = np.random.default_rng(1).integers(1, 500, (2, size, size)).astype("uint16")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=size,
        width=size,
        count=2,
        dtype="uint16",
        crs=crs,
        nodata=0,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        transform=from_origin(*origin, RES, RES),
    ) as dst:
        dst.write(data)


def blocks_spanned(
    query: tuple[slice, slice, slice], origin: tuple[float, float], block: int
) -> tuple[int, int]:
    """Blocks a chip spans across and down the tiling of a file at ``origin``."""
    x, y, _ = query
    col, row = (x.start - origin[0]) / RES, (origin[1] - y.stop) / RES
    cols, rows = round((x.stop - x.start) / RES), round((y.stop - y.start) / RES)
    assert col == round(col) and row == round(row)  # on the file's pixel grid
    return (
        int((col + cols - 1) // block - col // block + 1),
        int((row + rows - 1) // block - row // block + 1),
    )


def test_block_aligned_chips_span_the_fewest_blocks(tmp_path: Path) -> None:
    origin = (500000.0, 5000000.0)
    write_tiled(tmp_path / "a.tif", 320, 64, "EPSG:32631", origin)
    # a scene in the next zone is warped: its chips cannot be aligned and are drawn as before
    write_tiled(tmp_path / "b.tif", 320, 64, "EPSG:32632", (-100000.0, 5000000.0))
    ds = MultiBandGeoTIFF(tmp_path / "a.tif")
    for chip, fewest in ((48, 1), (80, 2), (64, 1)):
        plain = [
            AOISampler(ds, None, chip, generator=torch.Generator().manual_seed(0)).sample(i)
            for i in range(200)
        ]
        sampler = AOISampler(
            ds, None, chip, block_aligned=True, generator=torch.Generator().manual_seed(0)
        )
        aligned = [sampler.sample(i) for i in range(200)]
        assert {blocks_spanned(q, origin, 64) for q in aligned} == {(fewest, fewest)}, chip
        assert max(max(blocks_spanned(q, origin, 64)) for q in plain) > fewest
        # chips keep the block they were drawn in and move by less than one
        for q, p in zip(aligned, plain, strict=True):
            assert abs(q[0].start - p[0].start) < 64 * RES
            assert abs(q[1].start - p[1].start) < 64 * RES
        offsets = {round((q[0].start - origin[0]) / RES) % 64 for q in aligned}
        slack = -(-chip // 64) * 64 - chip
        assert offsets <= set(range(slack + 1))
        assert len(offsets) > slack // 2  # offsets within the slack are still drawn
        again = AOISampler(
            ds, None, chip, block_aligned=True, generator=torch.Generator().manual_seed(0)
        )
        assert [again.sample(i) for i in range(200)] == aligned  # a pure function of the seed
        assert pickle.loads(pickle.dumps(sampler)).sample(7) == aligned[7]
    both = MultiBandGeoTIFF(tmp_path)
    sampler = AOISampler(
        both, None, 48, length=300, block_aligned=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(sampler.blocks) == 1  # only a.tif is read on the dataset's grid
    a = scene(both, "a")
    inside = [q for q in sampler if a.contains(box_of(q))]
    assert inside and {blocks_spanned(q, origin, 64) for q in inside} == {(1, 1)}


def test_block_aligned_chips_respect_the_aoi_and_fall_back_where_none_fits(tmp_path: Path) -> None:
    origin = (500000.0, 5000000.0)
    write_tiled(tmp_path / "a.tif", 320, 64, "EPSG:32631", origin)
    ds = MultiBandGeoTIFF(tmp_path)
    x0, y1 = origin
    # a polygon across a block boundary, only 40 px wide: no aligned 32-px chip fits inside it
    narrow = shapely.box(x0 + 44 * RES, y1 - 300 * RES, x0 + 84 * RES, y1 - 10 * RES)
    wide = shapely.box(x0 + 130 * RES, y1 - 300 * RES, x0 + 310 * RES, y1 - 120 * RES)
    aoi = gpd.GeoDataFrame({"name": ["narrow", "wide"]}, geometry=[narrow, wide], crs=ds.crs)
    sampler = AOISampler(
        ds,
        aoi,
        32,
        length=300,
        block_aligned=True,
        weight_column=None,
        generator=torch.Generator().manual_seed(2),
    )
    chips = list(sampler)
    for q in chips:
        assert narrow.buffer(TOL).contains(box_of(q)) or wide.buffer(TOL).contains(box_of(q))
    in_narrow = [q for q in chips if narrow.buffer(TOL).contains(box_of(q))]
    in_wide = [q for q in chips if wide.buffer(TOL).contains(box_of(q))]
    assert in_narrow and in_wide
    assert {blocks_spanned(q, origin, 64) for q in in_wide} == {(1, 1)}
    # the narrow polygon straddles the boundary at column 64: its chips keep their placement
    assert any(blocks_spanned(q, origin, 64)[0] == 2 for q in in_narrow)
