"""AOISampler's set-up over many footprints: the fast geometry equals the general one.

The footprint union (coverage union or plain parts instead of a general union), the
per-part erosion and growth, and the R-tree containment test are checked against the
general shapely operations that AOISampler used before, on catalogs of touching tiles,
tiles with gaps and overlapping tiles; then a sampler over 100 real GeoTIFFs draws chips
that lie inside the tiles.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geodino.datasets import MultiBandGeoTIFF
from geodino.samplers import AOISampler
from geodino.samplers.aoi import footprint_union
from geodino.samplers.geometry import erode_by_box, grow, triangulate
from geodino.seeding import torch_generator

RES = 10.0


def tiles(side: int, gap: float, step: float = 640.0, shift: float = 0.0) -> np.ndarray:
    """``side`` x ``side`` square tiles ``step`` apart, ``gap`` between them, rows shifted."""
    row, col = np.divmod(np.arange(side * side), side)
    x0 = 300000 + col * step + (row % 2) * shift
    y0 = 5000000 - row * step
    boxes = shapely.box(x0, y0 - step + gap, x0 + step - gap, y0)
    # repeats: a tile's other acquisitions, as the same object (STAC) or equal copies (files)
    return np.concatenate([boxes, boxes[:3], shapely.from_wkb(shapely.to_wkb(boxes[3:6]))])


def old_erosion(geometry: shapely.Geometry, half_w: float, half_h: float) -> shapely.Geometry:
    """The erosion as AOISampler computed it before: one union over every swept segment."""
    lines = shapely.get_parts(shapely.boundary(geometry))
    coords, which = shapely.get_coordinates(lines, return_index=True)
    same = which[1:] == which[:-1]
    segments = np.stack([coords[:-1][same], coords[1:][same]], axis=1)
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    points = (segments[:, :, None, :] + corners[None, None]).reshape(len(segments), 8, 2)
    swept = shapely.union_all(shapely.convex_hull(shapely.multipoints(points)))
    return shapely.difference(geometry, swept)


@pytest.mark.parametrize(
    ("gap", "shift"),
    [(0.0, 0.0), (10.0, 0.0), (0.0, 320.0), (-50.0, 0.0)],
    ids=["touching", "gaps", "bricks", "overlapping"],
)
def test_footprint_union_equals_the_general_union(gap: float, shift: float) -> None:
    footprints = tiles(12, gap, shift=shift)
    expected = shapely.normalize(shapely.union_all(footprints))
    assert shapely.equals_exact(footprint_union(footprints), expected, tolerance=0)


@pytest.mark.parametrize("gap", [0.0, 10.0, -50.0], ids=["touching", "gaps", "overlapping"])
def test_erosion_and_growth_equal_the_general_operations(gap: float) -> None:
    union = footprint_union(tiles(10, gap))
    # an L-shaped part and a part with a hole go through the general erosion
    ell = shapely.Polygon([(0, 0), (900, 0), (900, 300), (300, 300), (300, 900), (0, 900)])
    ring = shapely.box(2000, 0, 2900, 900).difference(shapely.box(2300, 300, 2600, 600))
    mixed = shapely.union_all([union, ell, ring])
    for geometry in (union, mixed):
        eroded = erode_by_box(geometry, 160.0, 120.0)
        old = old_erosion(geometry, 160.0, 120.0)
        assert abs(eroded.area - old.area) <= 1e-9 * old.area
        assert shapely.symmetric_difference(eroded, old).area <= 1e-6 * old.area
        grown = grow(eroded, RES / 2)
        old_grown = shapely.buffer(old, RES / 2, join_style="mitre")
        assert abs(grown.area - old_grown.area) <= 1e-9 * old_grown.area
        assert shapely.symmetric_difference(grown, old_grown).area <= 1e-6 * old_grown.area
        _, cumulative = triangulate(grown)
        assert cumulative[-1] == pytest.approx(old_grown.area, rel=1e-9)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 scenes of 32 x 32 px with 1-px gaps: more parts than the sampler tests one by one."""
    root = tmp_path_factory.mktemp("many")
    data = np.ones((1, 32, 32), dtype=np.uint16)
    for i in range(100):
        row, col = divmod(i, 10)
        with rasterio.open(
            root / f"s{i:03d}.tif",
            "w",
            driver="GTiff",
            height=32,
            width=32,
            count=1,
            dtype="uint16",
            crs="EPSG:32631",
            transform=from_origin(300000 + col * 330, 5000000 - row * 330, RES, RES),
        ) as dst:
            dst.write(data)
    return root


def test_chips_over_many_tiles_lie_inside_one_tile(catalog: Path) -> None:
    ds = MultiBandGeoTIFF(catalog)
    sampler = AOISampler(ds, None, 16, length=400, generator=torch_generator(0))
    footprints = ds.index.geometry.to_numpy()
    old_union = shapely.union_all(footprints)
    assert sampler._parts is not None  # the R-tree path is the one under test
    assert sampler.union.area == pytest.approx(old_union.area, rel=1e-12)
    # each chip of 16 px fits in one 32-px tile: the eroded area is 100 squares of 16 + 1 px
    _, cumulative = sampler._triangles[0]
    assert cumulative[-1] == pytest.approx(100 * (17 * RES) ** 2, rel=1e-9)
    hits = 0
    for x, y, _ in sampler:
        chip = shapely.box(x.start + 1e-6, y.start + 1e-6, x.stop - 1e-6, y.stop - 1e-6)
        assert shapely.contains(old_union, chip)
        hits += 1
    assert hits == 400
    # the R-tree answers as the union does, also for chips crossing gaps and edges
    rng = np.random.default_rng(0)
    x0 = 300000 + rng.uniform(-200, 3400, 2000)
    y0 = 5000000 - rng.uniform(-200, 3400, 2000)
    inner = shapely.box(x0 + 1e-6, y0 + 1e-6, x0 + 160 - 1e-6, y0 + 160 - 1e-6)
    expected = shapely.contains(old_union, inner)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(sampler._covers(x0, y0), expected)
    # and a pickled sampler (a loader worker's) draws the same chips
    clone = pickle.loads(pickle.dumps(sampler))
    assert [clone.sample(i) for i in range(20)] == [sampler.sample(i) for i in range(20)]
