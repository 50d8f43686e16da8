"""AOISampler on real rasters in two UTM zones with AOIs written to disk in EPSG:4326."""

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin
from scipy.stats import chisquare
from torchgeo.samplers import RandomGeoSampler

from geodino.datasets import MultiBandGeoTIFF
from geodino.errors import ConfigError, DataError
from geodino.samplers import AOISampler, read_aoi


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> MultiBandGeoTIFF:
    root = tmp_path_factory.mktemp("utm")
    rng = np.random.default_rng(0)
    # two scenes in zone 31 and one in zone 32, around 6 deg E
    for name, crs, x0, y0 in (("a", 32631, 716000, 4990000), ("b", 32631, 716000, 4985000),
                              ("c", 32632, 276000, 4990000)):
        data = rng.integers(1, 500, (2, 500, 500)).astype("uint16")
        with rasterio.open(root / f"{name}.tif", "w", driver="GTiff", height=500, width=500,
                           count=2, dtype="uint16", crs=f"EPSG:{crs}", nodata=0,
                           transform=from_origin(x0, y0, 10, 10)) as dst:
            dst.write(data)
    return MultiBandGeoTIFF(root)


def aoi_file(ds: MultiBandGeoTIFF, path: Path, driver: str = "GPKG") -> Path:
    """Three polygons (one a two-part MultiPolygon) in EPSG:4326 over the scenes."""
    footprints = ds.index.geometry.values
    parts = [shapely.box(*f.buffer(-600).bounds) for f in footprints]
    small = shapely.box(*footprints[0].buffer(-1800).bounds)
    geoms = [shapely.MultiPolygon([parts[1], parts[2]]), parts[0].difference(small.buffer(300)),
             small]
    gdf = gpd.GeoDataFrame({"name": ["multi", "ring", "small"], "split": ["train", "train", "val"],
                            "weight": [1.0, 3.0, 1.0]}, geometry=geoms, crs=ds.index.crs)
    gdf.to_crs(4326).to_file(path, driver=driver)
    return path


def test_1000_chips_inside_the_aoi_with_area_weights(catalog: MultiBandGeoTIFF, tmp_path: Path) -> None:
    path = aoi_file(catalog, tmp_path / "aoi.gpkg")
    sampler = AOISampler(catalog, path, 32, min_coverage=1.0,
                         generator=torch.Generator().manual_seed(0))
    union = shapely.union_all(sampler.regions)
    counts = np.zeros(len(sampler.aoi))
    for i in range(1000):
        x, y, _ = sampler.sample(i)
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        assert shapely.area(shapely.intersection(box, union)) / box.area >= 1 - 1e-9
        counts[sampler.polygon_of(i)] += 1
    areas = np.array([r.area for r in sampler.regions])
    expected = 1000 * areas / areas.sum()
    assert chisquare(counts, expected).pvalue > 0.001
    wrong = 1000 * np.array([1, 1, 1]) / 3  # equal weights would not fit
    assert chisquare(counts, wrong).pvalue < 1e-6


def test_weight_column_sets_the_proportions(catalog: MultiBandGeoTIFF, tmp_path: Path) -> None:
    path = aoi_file(catalog, tmp_path / "aoi.geojson", driver="GeoJSON")
    sampler = AOISampler(catalog, path, 16, weight_column="weight",
                         generator=torch.Generator().manual_seed(1))
    counts = np.bincount([sampler.polygon_of(i) for i in range(1000)], minlength=3)
    assert chisquare(counts, 1000 * np.array([1, 3, 1]) / 5).pvalue > 0.001


def test_chips_are_seeded_pixel_aligned_and_read_at_size(catalog: MultiBandGeoTIFF) -> None:
    a = AOISampler(catalog, None, 24, length=20, generator=torch.Generator().manual_seed(3))
    b = AOISampler(catalog, None, 24, length=20, generator=torch.Generator().manual_seed(3))
    first = list(a)
    assert first == [b.sample(i) for i in range(20)]
    assert list(a) != first  # the next epoch draws new chips
    assert a.sample(5, attempt=1) != a.sample(5)
    x0 = catalog.bounds[0].start
    for x, y, _ in first:
        assert (x.start - x0) / 10 == pytest.approx(round((x.start - x0) / 10))
        assert catalog[(x, y, catalog.bounds[2])]["image"].shape == (2, 24, 24)


def test_grid_mode_covers_the_aoi(catalog: MultiBandGeoTIFF, tmp_path: Path) -> None:
    path = aoi_file(catalog, tmp_path / "aoi.gpkg")
    grid = AOISampler(catalog, path, 32, stride=32, query="name == 'small'")
    boxes = [shapely.box(x.start, y.start, x.stop, y.stop) for x, y, _ in grid]
    assert len(boxes) == len(grid) > 10
    covered = shapely.union_all(boxes)
    inner = sampler_region = grid.union.buffer(-32 * 10 * 1.5)
    assert covered.contains(inner) and sampler_region.area > 0
    assert all(grid.coverage(q) >= 1 - 1e-9 for q in grid)


def test_torchgeo_random_sampler_leaks_outside_the_polygon(catalog: MultiBandGeoTIFF) -> None:
    footprint = catalog.index.geometry.values[0]
    polygon = shapely.Polygon([footprint.bounds[:2], (footprint.bounds[2], footprint.bounds[1]),
                               (footprint.bounds[0], footprint.bounds[3])])  # a triangle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = RandomGeoSampler(catalog, 32, length=300, roi=polygon)
    boxes = [shapely.box(x.start, y.start, x.stop, y.stop) for x, y, _ in stock]
    inside = sum(polygon.contains(b) for b in boxes)
    assert inside < 250  # many of TorchGeo's chips lie (partly) outside the triangle
    aoi = gpd.GeoDataFrame(geometry=[polygon], crs=catalog.index.crs)
    ours = AOISampler(catalog, aoi, 32, length=300, generator=torch.Generator().manual_seed(0))
    assert all(polygon.buffer(1e-6).contains(shapely.box(x.start, y.start, x.stop, y.stop))
               for x, y, _ in ours)


def test_bad_aois(catalog: MultiBandGeoTIFF, tmp_path: Path) -> None:
    far = gpd.GeoDataFrame(geometry=[shapely.box(-70, -10, -69, -9)], crs=4326)
    with pytest.raises(DataError, match="does not intersect the data"):
        AOISampler(catalog, far, 32)
    no_crs = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])
    no_crs.to_file(tmp_path / "nocrs.geojson", driver="GeoJSON")
    (tmp_path / "nocrs.shp").parent.mkdir(exist_ok=True)
    no_crs.to_file(tmp_path / "nocrs.shp")
    with pytest.raises(DataError, match="has no CRS"):
        read_aoi(tmp_path / "nocrs.shp")
    with pytest.raises(DataError, match="does not exist"):
        read_aoi(tmp_path / "missing.gpkg")
    lines = gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=4326)
    with pytest.raises(DataError, match="holds no polygons"):
        read_aoi(lines)
    path = aoi_file(catalog, tmp_path / "aoi.gpkg")
    with pytest.raises(DataError, match="selects no polygon"):
        read_aoi(path, query="split == 'test'")
    with pytest.raises(DataError, match="weight_column 'area'"):
        AOISampler(catalog, path, 32, weight_column="area")
    with pytest.raises(ConfigError, match="min_coverage"):
        AOISampler(catalog, path, 32, min_coverage=0)
    with pytest.raises(ConfigError, match="size must be positive"):
        AOISampler(catalog, path, -4)
    huge = AOISampler(catalog, path, 400, query="name == 'small'", max_tries=2)
    with pytest.raises(DataError, match=r"polygon 0 \(small\)"):
        huge.sample(0)


def test_invalid_and_empty_geometries_are_repaired_or_dropped(catalog: MultiBandGeoTIFF) -> None:
    x0, y0, x1, y1 = catalog.index.geometry.values[0].buffer(-500).bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame({"name": ["bowtie", "empty"]},
                           geometry=[bowtie, shapely.Polygon()], crs=catalog.index.crs)
    aoi = read_aoi(gdf)
    assert len(aoi) == 1 and aoi.geometry.iloc[0].is_valid
    sampler = AOISampler(catalog, gdf, 16, generator=torch.Generator().manual_seed(0))
    assert sampler.coverage(sampler.sample(0)) == pytest.approx(1.0)
