"""The demo catalog: deterministic, two UTM zones, nodata, and its matched class pairs."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geodino.datasets.synthetic import (
    CLASSES,
    LABEL_NODATA,
    DemoCatalog,
    DemoLandCover,
    DemoSentinel1,
    DemoSentinel2,
    write_demo_catalog,
)
from geodino.errors import DataError


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> DemoCatalog:
    return write_demo_catalog(tmp_path_factory.mktemp("demo"), seed=0, scene_size=256)


def pixels(catalog: DemoCatalog) -> tuple[np.ndarray, np.ndarray]:
    spectra, labels = [], []
    for path in sorted(catalog.s2.glob("*.tif")):
        with rasterio.open(path) as src:
            spectra.append(src.read().reshape(13, -1))
        with rasterio.open(catalog.labels / path.name) as src:
            labels.append(src.read(1).ravel())
    return np.concatenate(spectra, 1).astype(float), np.concatenate(labels)


def test_layout_crs_nodata_and_grids(catalog: DemoCatalog) -> None:
    crss = set()
    for path in sorted(catalog.s2.glob("*.tif")):
        with rasterio.open(path) as s2, rasterio.open(catalog.s1 / path.name) as s1, \
                rasterio.open(catalog.labels / path.name) as lab:
            crss.add(s2.crs.to_epsg())
            assert s2.count == 13 and s2.dtypes[0] == "uint16" and s2.nodata == 0
            assert s1.descriptions == ("VV", "VH") and s1.transform == s2.transform
            missing = (s2.read(1) == 0)
            assert (lab.read(1)[missing] == LABEL_NODATA).all()
    assert crss == {32631, 32632}
    _, labels = pixels(catalog)
    assert set(np.unique(labels)) == set(range(len(CLASSES))) | {LABEL_NODATA}
    aoi = gpd.read_file(catalog.aoi)
    assert aoi.crs.to_epsg() == 4326 and "MultiPolygon" in set(aoi.geom_type)
    assert set(aoi["split"]) == {"train", "val"}
    ds = DemoSentinel2(catalog.root)
    for epsg in (32631, 32632):
        footprint = gpd.GeoSeries(ds.index.geometry, crs=ds.index.crs).to_crs(4326)
        assert aoi.intersects(footprint.union_all()).any()
    assert DemoSentinel1(catalog.root).band_kind == "sar"
    assert len(DemoLandCover(catalog.root).index) == 4


def test_deterministic_for_a_seed(catalog: DemoCatalog, tmp_path: Path) -> None:
    again = write_demo_catalog(tmp_path / "a", seed=0, scene_size=256)
    other = write_demo_catalog(tmp_path / "b", seed=1, scene_size=256)
    name = sorted(catalog.s2.glob("*.tif"))[0].name
    with rasterio.open(catalog.s2 / name) as a, rasterio.open(again.s2 / name) as b, \
            rasterio.open(other.s2 / name) as c:
        assert np.array_equal(a.read(), b.read()) and not np.array_equal(a.read(), c.read())


def test_matched_pairs_differ_only_in_space(catalog: DemoCatalog) -> None:
    spectra, labels = pixels(catalog)
    means = {c: spectra[:, labels == i].mean(1) for i, c in enumerate(CLASSES)}
    for a, b in (("meadow", "row_crops"), ("bare_soil", "street_grid")):
        # the same spectral shape; the level differs only by the parcels' random illumination
        np.testing.assert_allclose(means[a] / means[a].sum(), means[b] / means[b].sum(), rtol=0.01)
        np.testing.assert_allclose(means[a], means[b], rtol=0.06)
        # the same per-pixel mixture: the share of vegetation-like (high NDVI) or dark
        # (asphalt-like) pixels, both indifferent to illumination
        ndvi = (spectra[7] - spectra[3]) / (spectra[7] + spectra[3])
        dark = spectra[11] < 0.6 * spectra[11, labels == CLASSES.index("bare_soil")].mean()
        for share in (ndvi > 0.5, dark):
            fa = share[labels == CLASSES.index(a)].mean()
            fb = share[labels == CLASSES.index(b)].mean()
            assert abs(fa - fb) < 0.03, (a, b, fa, fb)
    # distinct classes are spectrally far apart
    assert np.abs(means["water"] - means["forest"]).max() > 1000

    # a spatial statistic separates each pair: the strongest correlation between a pixel and
    # a neighbour within 2 pixels (stripes and streets keep their value along some direction)
    def structure(cls: str) -> float:
        best = 0.0
        offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(0, 3) if (dy, dx) > (0, 0) or dx > 0]
        for path in sorted(catalog.s2.glob("*.tif")):
            with rasterio.open(path) as src, rasterio.open(catalog.labels / path.name) as lab:
                nir = src.read(8).astype(float)
                mask = lab.read(1) == CLASSES.index(cls)
            h, w = nir.shape
            for dy, dx in offsets:
                a = (slice(max(0, -dy), h - max(0, dy)), slice(0, w - dx))
                b = (slice(max(0, dy), h - max(0, -dy) if dy < 0 else h), slice(dx, w))
                both = mask[a] & mask[b]
                if both.sum() > 500:
                    best = max(best, np.corrcoef(nir[a][both], nir[b][both])[0, 1])
        return best

    assert structure("row_crops") > structure("meadow") + 0.3
    assert structure("street_grid") > structure("bare_soil") + 0.3


def test_missing_catalog_says_how_to_write_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="geodino demo-data"):
        DemoCatalog.load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="geodino demo-data"):
        DemoSentinel2(tmp_path / "nowhere")
