"""The demo catalog: layout, two UTM zones, nodata, AOI, physics, and its matched class pairs."""

import json
import sqlite3
from itertools import combinations
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import torch
from pyproj import CRS
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.tree import DecisionTreeClassifier
from torchgeo.datasets import IntersectionDataset, RasterDataset
from torchgeo.samplers import GriddedPatchSampler

from geodino.datasets.sentinel import S1_BANDS, S2_BANDS
from geodino.demo.catalog import (
    CLASSES,
    LABEL_NODATA,
    LOOKS,
    MATCHED_PAIRS,
    MATERIALS,
    SCENE_NAMES,
    SPLIT_ROW,
    DemoCatalog,
    DemoLandCover,
    DemoSentinel1,
    DemoSentinel2,
    write_demo_catalog,
)
from geodino.errors import ConfigError, DataError

B = {band: i for i, band in enumerate(S2_BANDS)}
C = {name: i for i, name in enumerate(CLASSES)}
SIZE = 256


class PlainS2(RasterDataset):
    """A bare TorchGeo reader of the S2 stacks, independent of geodino's readers."""

    filename_glob = "*.tif"
    all_bands = S2_BANDS


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> DemoCatalog:
    return write_demo_catalog(tmp_path_factory.mktemp("demo"), seed=0, scene_size=SIZE)


@pytest.fixture(scope="module")
def scenes(catalog: DemoCatalog) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """S2 (13, H, W) float, S1 (2, H, W) float and labels (H, W) of every scene."""
    out = {}
    for name in SCENE_NAMES:
        with (
            rasterio.open(catalog.s2 / f"{name}.tif") as s2,
            rasterio.open(catalog.s1 / f"{name}.tif") as s1,
            rasterio.open(catalog.labels / f"{name}.tif") as lab,
        ):
            out[name] = (s2.read().astype(float), s1.read().astype(float), lab.read(1))
    return out


@pytest.fixture(scope="module")
def pixels(scenes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All valid pixels: S2 (13, N), S1 (2, N), labels (N,), in the north (train) rows (N,)."""
    s2 = np.concatenate([v[0].reshape(13, -1) for v in scenes.values()], 1)
    s1 = np.concatenate([v[1].reshape(2, -1) for v in scenes.values()], 1)
    labels = np.concatenate([v[2].ravel() for v in scenes.values()])
    rows = np.indices((SIZE, SIZE))[0].ravel()
    north = np.tile(rows < SPLIT_ROW * SIZE, len(scenes))
    valid = labels != LABEL_NODATA
    return s2[:, valid], s1[:, valid], labels[valid], north[valid]


@pytest.fixture(scope="module")
def pure_chips(scenes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32-px chips lying inside one parcel class: S2 (N, 13, 32, 32), class, in train rows."""
    chips, classes, train = [], [], []
    size, stride = 32, 16
    for s2, _, labels in scenes.values():
        for row in range(0, SIZE - size + 1, stride):
            for col in range(0, SIZE - size + 1, stride):
                window = labels[row : row + size, col : col + size]
                if window.min() == window.max() != LABEL_NODATA:
                    chips.append(s2[:, row : row + size, col : col + size])
                    classes.append(int(window[0, 0]))
                    train.append(row + size <= SPLIT_ROW * SIZE)
    return np.stack(chips), np.array(classes), np.array(train)


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 40) -> float:
    """Total variation distance between the histograms of two samples on shared bins."""
    low, high = np.percentile(np.concatenate([a, b]), [0.5, 99.5])
    ha, _ = np.histogram(a, bins, (low, high))
    hb, _ = np.histogram(b, bins, (low, high))
    return 0.5 * float(np.abs(ha / ha.sum() - hb / hb.sum()).sum())


def structure(chips: np.ndarray, min_lag: float = 3.0) -> np.ndarray:
    """Strongest NIR autocorrelation of each chip at a lag of at least ``min_lag`` pixels.

    Stripes and street grids repeat along some direction (or after one period), so some
    distant neighbour looks like the pixel; random blobs decorrelate within a few pixels.
    """
    z = chips[:, B["B08"]]
    z = (z - z.mean((1, 2), keepdims=True)) / z.std((1, 2), keepdims=True)
    h = z.shape[1]
    n = 2 * h
    power = np.abs(np.fft.rfft2(z, (n, n))) ** 2
    autocorr = np.fft.irfft2(power, (n, n))
    overlap = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones((h, h)), (n, n))) ** 2, (n, n))
    lag_y, lag_x = np.meshgrid(np.fft.fftfreq(n, 1 / n), np.fft.fftfreq(n, 1 / n), indexing="ij")
    usable = (lag_y**2 + lag_x**2 >= min_lag**2) & (overlap > 0.4 * h * h)
    return (autocorr / np.maximum(overlap, 1))[:, usable].max(1)


# ---------------------------------------------------------------------------------------------
# layout, grids, nodata, AOI


def test_layout_formats_and_metadata(catalog: DemoCatalog) -> None:
    assert catalog.classes == CLASSES and catalog.complete()
    assert DemoCatalog.load(catalog.root) == catalog
    for name in SCENE_NAMES:
        with (
            rasterio.open(catalog.s2 / f"{name}.tif") as s2,
            rasterio.open(catalog.s1 / f"{name}.tif") as s1,
            rasterio.open(catalog.labels / f"{name}.tif") as lab,
        ):
            assert (s2.count, s2.dtypes[0], s2.nodata) == (13, "uint16", 0)
            assert (s1.count, s1.dtypes[0], s1.nodata) == (2, "float32", 0)
            assert (s2.descriptions, s1.descriptions) == (S2_BANDS, S1_BANDS)
            assert (lab.count, lab.dtypes[0], lab.nodata) == (1, "uint8", LABEL_NODATA)
            for src in (s2, s1, lab):
                assert src.compression == rasterio.enums.Compression.deflate
                assert src.block_shapes[0] == (256, 256)
                assert src.res == (10.0, 10.0) and src.shape == (SIZE, SIZE)
                # co-registered: the same grid, CRS included
                assert (src.crs, src.transform) == (s2.crs, s2.transform)
            assert lab.colormap(1)[C["water"]][2] > 150  # a colour table for QGIS and TorchGeo
    meta = json.loads((catalog.root / "classes.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["label_nodata"] == LABEL_NODATA
    assert [tuple(p) for p in meta["matched_pairs"]] == list(MATCHED_PAIRS)
    assert (meta["seed"], meta["scene_size"]) == (0, SIZE)
    readme = (catalog.root / "README.md").read_text()
    assert "street_grid" in readme and "EPSG:32632" in readme


def test_scenes_lie_in_two_utm_zones_either_side_of_6e(catalog: DemoCatalog) -> None:
    lons: dict[int, list[float]] = {32631: [], 32632: []}
    for name in SCENE_NAMES:
        with rasterio.open(catalog.s2 / f"{name}.tif") as src:
            west, _, east, _ = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            lons[src.crs.to_epsg()] += [west, east]
    assert len(lons[32631]) == len(lons[32632]) == 4
    assert min(lons[32631]) > 5.5 and max(lons[32631]) < 6.0
    assert min(lons[32632]) > 6.0 and max(lons[32632]) < 6.5


def test_nodata_margins_are_shared_by_s2_s1_and_labels(scenes: dict) -> None:
    fractions = []
    for s2, s1, labels in scenes.values():
        missing = labels == LABEL_NODATA
        fractions.append(missing.mean())
        # the whole S2 stack is 0 exactly there, and no valid reflectance is 0
        assert ((s2 == 0).all(0) == missing).all() and (s2[:, ~missing] > 0).all()
        assert ((s1 == 0).all(0) == missing).all() and (s1[:, ~missing] > 0).all()
    # three scenes have margins (a slanted swath edge, a corner, a granule edge), one is full
    assert sorted(f > 0.02 for f in fractions) == [False, True, True, True]
    assert max(fractions) < 0.3


def test_aoi_is_wgs84_with_multipolygons_over_both_zones(
    catalog: DemoCatalog, scenes: dict
) -> None:
    aoi = gpd.read_file(catalog.aoi)
    assert aoi.crs.to_epsg() == 4326
    assert {"name", "split", "weight"} <= set(aoi.columns) and (aoi["weight"] > 0).all()
    assert set(aoi["split"]) == {"train", "val"} and aoi["name"].is_unique
    assert {"Polygon", "MultiPolygon"} <= set(aoi.geom_type)
    # GeoPackage 1.2 (user_version 10200): QGIS 3.22 LTR warns on the 1.4 GDAL writes by default
    with sqlite3.connect(catalog.aoi) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
    assert any(len(p.interiors) for g in aoi.geometry for p in getattr(g, "geoms", [g]))
    footprints = []
    for name, (_, _, labels) in scenes.items():
        with rasterio.open(catalog.labels / f"{name}.tif") as src:
            shapes = rasterio.features.shapes(
                (labels != LABEL_NODATA).astype(np.uint8),
                mask=labels != LABEL_NODATA,
                transform=src.transform,
            )
            valid = gpd.GeoSeries([shapely.geometry.shape(s) for s, _ in shapes], crs=src.crs)
        data = valid.union_all()
        local = aoi.to_crs(src.crs)
        # each scene's valid data is covered by train and validation polygons
        for split in ("train", "val"):
            assert local[local["split"] == split].intersection(data).area.sum() > 0.2 * data.area
        footprints.append(valid.to_crs(4326).union_all())
    data = gpd.GeoSeries([shapely.union_all(footprints)], crs=4326).to_crs(32631).iloc[0]
    projected = aoi.to_crs(32631)
    # one polygon sticks out of the data; train and validation never overlap
    assert (projected.difference(data).area > 0.1 * projected.area).any()
    train = aoi[aoi["split"] == "train"].union_all()
    assert train.intersection(aoi[aoi["split"] == "val"].union_all()).area == 0


def test_every_class_in_both_zones(scenes: dict) -> None:
    for zone in ("zone31", "zone32"):
        labels = np.concatenate([v[2].ravel() for k, v in scenes.items() if k.startswith(zone)])
        shares = np.bincount(labels[labels != LABEL_NODATA], minlength=len(CLASSES))
        assert len(shares) == len(CLASSES) and (shares / shares.sum() > 0.05).all(), shares


def test_parcels_give_chips_a_clear_majority(scenes: dict) -> None:
    majority = []
    for _, _, labels in scenes.values():
        for row in range(0, SIZE - 48 + 1, 24):
            for col in range(0, SIZE - 48 + 1, 24):
                counts = np.bincount(labels[row : row + 48, col : col + 48].ravel(), minlength=256)
                majority.append(counts[: len(CLASSES)].max() / 48**2)
    assert np.mean(np.array(majority) >= 0.6) > 0.5


# ---------------------------------------------------------------------------------------------
# physics


def test_endmembers_are_plausible() -> None:
    spectra = {m.name: np.array(m.reflectance, dtype=float) for m in MATERIALS}
    assert all(len(s) == 13 for s in spectra.values())
    water, soil, asphalt = spectra["water"], spectra["soil"], spectra["asphalt"]
    assert water[B["B08"]] < 200 and water[B["B08"]] < 0.3 * water[B["B03"]]
    for name in ("vegetation", "forest"):
        veg = spectra[name]
        assert veg[B["B03"]] > veg[B["B04"]] < veg[B["B05"]] < veg[B["B06"]] < veg[B["B07"]]
        assert veg[B["B08"]] > 5 * veg[B["B04"]] and veg[B["B12"]] < veg[B["B11"]] < veg[B["B8A"]]
    assert np.all(np.diff(soil[[B[b] for b in ("B02", "B03", "B04", "B05", "B08", "B11")]]) > 0)
    visible_to_swir = asphalt[[B[b] for b in ("B02", "B03", "B04", "B08", "B11", "B12")]]
    assert visible_to_swir.max() / visible_to_swir.min() < 1.4
    for m in MATERIALS:
        assert m.backscatter[1] < m.backscatter[0]  # VH < VV


def test_class_spectra_and_backscatter_in_the_catalog(pixels: tuple) -> None:
    s2, s1, labels, _ = pixels
    mean = {c: s2[:, labels == C[c]].mean(1) for c in CLASSES}
    ndvi = {c: (m[B["B08"]] - m[B["B04"]]) / (m[B["B08"]] + m[B["B04"]]) for c, m in mean.items()}
    assert ndvi["water"] < 0 < ndvi["bare_soil"] < 0.3 < ndvi["meadow"] < ndvi["forest"]
    vv = {c: np.median(10 * np.log10(s1[0, labels == C[c]])) for c in CLASSES}
    vh = {c: np.median(10 * np.log10(s1[1, labels == C[c]])) for c in CLASSES}
    assert vv["water"] < -20 and vv["urban"] > -10  # specular water, double-bounce in towns
    assert vv["water"] < vv["bare_soil"] < vv["meadow"] < vv["forest"] < vv["urban"]
    assert all(vh[c] < vv[c] - 3 for c in CLASSES)
    # fully developed speckle of a few looks: std/mean of intensity ~ 1/sqrt(looks)
    water = s1[0, labels == C["water"]]
    assert 0.8 < water.std() / water.mean() * np.sqrt(LOOKS) < 1.4


# ---------------------------------------------------------------------------------------------
# the matched pairs


def test_matched_pairs_share_per_pixel_distributions(pixels: tuple) -> None:
    s2, s1, labels, _ = pixels
    for a, b in MATCHED_PAIRS:
        pa, pb = labels == C[a], labels == C[b]
        np.testing.assert_allclose(s2[:, pa].mean(1), s2[:, pb].mean(1), rtol=0.04)
        np.testing.assert_allclose(s1[:, pa].mean(1), s1[:, pb].mean(1), rtol=0.06)
        # ~11 parcels per class at this size: the parcels' illumination leaves some spread
        for band in range(13):
            assert histogram_distance(s2[band, pa], s2[band, pb]) < 0.25, (a, b, S2_BANDS[band])
        for band in range(2):
            assert histogram_distance(np.log(s1[band, pa]), np.log(s1[band, pb])) < 0.05, (a, b)
        # a ratio cancels the parcels' illumination: what is left is the mixture of materials
        ratio_a = s2[B["B11"], pa] / s2[B["B02"], pa]
        ratio_b = s2[B["B11"], pb] / s2[B["B02"], pb]
        ndvi_a = (s2[B["B08"], pa] - s2[B["B04"], pa]) / (s2[B["B08"], pa] + s2[B["B04"], pa])
        ndvi_b = (s2[B["B08"], pb] - s2[B["B04"], pb]) / (s2[B["B08"], pb] + s2[B["B04"], pb])
        assert histogram_distance(ratio_a, ratio_b) < 0.1
        assert histogram_distance(ndvi_a, ndvi_b) < 0.1


def test_distinct_classes_have_distinct_spectra(pixels: tuple) -> None:
    s2, _, labels, _ = pixels
    matched = {frozenset(p) for p in MATCHED_PAIRS}
    for a, b in combinations(CLASSES, 2):
        ma, mb = s2[:, labels == C[a]].mean(1), s2[:, labels == C[b]].mean(1)
        if frozenset((a, b)) in matched:
            continue
        assert (np.abs(ma - mb) / np.maximum(ma, mb)).max() > 0.25, (a, b)
        assert (
            max(histogram_distance(s2[k, labels == C[a]], s2[k, labels == C[b]]) for k in range(13))
            > 0.5
        ), (a, b)


def test_pixels_cannot_tell_a_pair_apart(pixels: tuple) -> None:
    """A flexible per-pixel classifier trained on northern parcels is at chance on the south."""
    s2, _, labels, north = pixels
    rng = np.random.default_rng(0)

    def held_out_score(a: str, b: str) -> float:
        pair = (labels == C[a]) | (labels == C[b])
        fit = rng.permutation(np.flatnonzero(pair & north))[:4000]
        test = rng.permutation(np.flatnonzero(pair & ~north))[:4000]
        model = DecisionTreeClassifier(max_depth=8, min_samples_leaf=20, random_state=0)
        model.fit(np.log(s2[:, fit].T), labels[fit] == C[b])
        return balanced_accuracy_score(labels[test] == C[b], model.predict(np.log(s2[:, test].T)))

    for a, b in MATCHED_PAIRS:
        assert held_out_score(a, b) < 0.6, (a, b)
    # the same test on classes that differ (though both have pure-soil pixels) and that don't
    assert held_out_score("meadow", "bare_soil") > 0.7
    assert held_out_score("water", "forest") > 0.95


def test_spatial_structure_separates_the_pairs_on_chips(pure_chips: tuple) -> None:
    chips, classes, train = pure_chips
    stat = structure(chips)
    means = np.log(chips.mean((2, 3)))
    for unstructured, structured in MATCHED_PAIRS:
        blobby, ordered = classes == C[unstructured], classes == C[structured]
        assert blobby.sum() >= 15 and ordered.sum() >= 15
        # one threshold on a simple spatial statistic separates nearly every chip
        threshold = (np.median(stat[blobby]) + np.median(stat[ordered])) / 2
        correct = (stat[blobby] < threshold).sum() + (stat[ordered] >= threshold).sum()
        assert correct / (blobby.sum() + ordered.sum()) > 0.95, (unstructured, structured)
        # while chip-mean spectra, fitted on northern chips, do no better than guessing
        pair = blobby | ordered
        fit, test = pair & train, pair & ~train
        model = LogisticRegression(max_iter=5000).fit(means[fit], ordered[fit])
        score = balanced_accuracy_score(ordered[test], model.predict(means[test]))
        assert score < 0.65, (unstructured, structured, score)


# ---------------------------------------------------------------------------------------------
# reading back with TorchGeo


def test_torchgeo_readers_line_up_pixels_with_labels(catalog: DemoCatalog, scenes: dict) -> None:
    images = PlainS2(str(catalog.s2), crs=CRS.from_epsg(32631), res=10.0)
    labels = DemoLandCover(catalog.root, crs=CRS.from_epsg(32631), res=10.0)
    assert len(labels.index) == len(images.index) == 4 and labels.classes == CLASSES
    with rasterio.open(catalog.s2 / "zone31_north.tif") as src:
        west, _south, east, north = src.bounds
    window = np.s_[west + 320 : west + 960 : 10.0, north - 960 : north - 320 : 10.0]
    image, mask = images[window]["image"], labels[window]["mask"]
    assert image.shape == (13, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.long
    s2, _, lab = scenes["zone31_north"]
    # TorchGeo reads exactly the pixels rasterio sees, in the scene's own CRS
    np.testing.assert_array_equal(mask.numpy(), lab[32:96, 32:96])
    np.testing.assert_array_equal(image.numpy(), s2[:, 32:96, 32:96])

    # through TorchGeo's intersection and grid sampler, zone 32 warped into zone 31
    both = IntersectionDataset(images, labels)
    nir_of: dict[int, list[torch.Tensor]] = {c: [] for c in range(len(CLASSES))}
    warped = 0
    for query in GriddedPatchSampler(both, size=128, stride=128):
        warped += query[0].start > east  # east of zone 31: read from EPSG:32632 files
        sample = both[query]
        image, mask = sample["image"], sample["mask"]
        empty = (image == 0).all(0)
        # nodata lines up, up to the bilinear edge of the warped image
        assert ((mask == LABEL_NODATA) & ~empty).float().mean() < 0.02
        assert (empty & (mask != LABEL_NODATA)).float().mean() < 0.02
        for c in range(len(CLASSES)):
            nir_of[c].append(image[B["B08"]][mask == c])
    assert warped >= 2
    nir = {CLASSES[c]: torch.cat(v) for c, v in nir_of.items()}
    assert (nir["water"] < 600).float().mean() > 0.97
    assert (nir["forest"] > 1500).float().mean() > 0.95


def test_demo_readers_open_the_catalog_root(catalog: DemoCatalog) -> None:
    s2 = DemoSentinel2(catalog.root)
    s1 = DemoSentinel1(catalog.root)
    assert len(s2.index) == len(s1.index) == 4 and s1.band_kind == "sar"
    with rasterio.open(catalog.s2 / "zone31_south.tif") as src:
        west, south, _, _ = src.bounds
    window = np.s_[west + 1000 : west + 1640 : 10.0, south + 1000 : south + 1640 : 10.0]
    image = s2[window]["image"]
    backscatter = s1[window]["image"]
    assert image.shape == (13, 64, 64) and backscatter.shape == (2, 64, 64)
    assert torch.isfinite(backscatter).all()
    assert (backscatter[1] < backscatter[0]).float().mean() > 0.8
    assert -40 < backscatter.mean() < 0  # dB


# ---------------------------------------------------------------------------------------------
# writing: determinism, reuse, refusals


def _arrays(catalog: DemoCatalog) -> list[np.ndarray]:
    out = []
    for path in catalog.rasters():
        with rasterio.open(path) as src:
            out.append(src.read())
    return out


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path: Path) -> None:
    a = write_demo_catalog(tmp_path / "a", seed=3, scene_size=64)
    b = write_demo_catalog(tmp_path / "b", seed=3, scene_size=64)
    c = write_demo_catalog(tmp_path / "c", seed=4, scene_size=64)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert x.tobytes() == y.tobytes()
    assert gpd.read_file(a.aoi).geometry.equals(gpd.read_file(b.aoi).geometry)
    for x, z in zip(_arrays(a), _arrays(c), strict=True):
        assert not np.array_equal(x, z)


def test_existing_catalog_is_kept_refused_or_overwritten(tmp_path: Path) -> None:
    catalog = write_demo_catalog(tmp_path, seed=0, scene_size=64)
    stamps = [p.stat().st_mtime_ns for p in catalog.rasters()]
    assert write_demo_catalog(tmp_path, seed=0, scene_size=64) == catalog
    assert [p.stat().st_mtime_ns for p in catalog.rasters()] == stamps
    with pytest.raises(DataError, match=r"seed 0.*overwrite"):
        write_demo_catalog(tmp_path, seed=1, scene_size=64)
    before = _arrays(catalog)
    write_demo_catalog(tmp_path, seed=1, scene_size=64, overwrite=True)
    assert json.loads((tmp_path / "classes.json").read_text())["seed"] == 1
    assert not np.array_equal(before[0], _arrays(catalog)[0])


def test_incomplete_catalog_is_reported_then_completed(tmp_path: Path) -> None:
    catalog = write_demo_catalog(tmp_path, seed=0, scene_size=64)
    reference = _arrays(catalog)
    (catalog.s1 / "zone32_south.tif").unlink()
    with pytest.raises(DataError, match=r"incomplete.*s1/zone32_south.tif.*geodino demo-data"):
        DemoCatalog.load(tmp_path)
    write_demo_catalog(tmp_path, seed=0, scene_size=64)
    for x, y in zip(reference, _arrays(DemoCatalog.load(tmp_path)), strict=True):
        assert x.tobytes() == y.tobytes()


def test_catalog_of_another_format_is_refused(tmp_path: Path) -> None:
    catalog = write_demo_catalog(tmp_path, seed=0, scene_size=64)
    meta = json.loads(catalog.metadata_path.read_text())
    meta["classes"] = meta["classes"][:6]
    catalog.metadata_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="overwrite"):
        DemoCatalog.load(tmp_path)
    with pytest.raises(DataError, match="overwrite"):
        write_demo_catalog(tmp_path, seed=0, scene_size=64)


def test_bad_arguments_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scene_size=16"):
        write_demo_catalog(tmp_path / "a", scene_size=16)
    with pytest.raises(ConfigError, match="seed=-1"):
        write_demo_catalog(tmp_path / "a", seed=-1, scene_size=64)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_demo_catalog(tmp_path / "file", scene_size=64)
    (tmp_path / "b" / "s2").mkdir(parents=True)
    (tmp_path / "b" / "s2" / "mine.tif").write_bytes(b"not ours")
    with pytest.raises(DataError, match=r"mine\.tif"):
        write_demo_catalog(tmp_path / "b", scene_size=64, overwrite=True)
    assert (tmp_path / "b" / "s2" / "mine.tif").read_bytes() == b"not ours"


def test_missing_catalog_says_how_to_write_it(tmp_path: Path) -> None:
    for open_ in (DemoCatalog.load, DemoSentinel2, DemoSentinel1, DemoLandCover):
        with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}.*geodino demo-data"):
            open_(tmp_path / "nowhere")


def test_damaged_label_raster_is_reported_not_skipped(tmp_path: Path) -> None:
    catalog = write_demo_catalog(tmp_path, seed=0, scene_size=64)
    path = catalog.labels / "zone31_south.tif"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"zone31_south\.tif.*--overwrite"):
        DemoLandCover(catalog.root)
    for name in SCENE_NAMES:
        (catalog.labels / f"{name}.tif").write_bytes(b"II*\x00")
    with pytest.raises(DataError, match=r"can be opened.*--overwrite"):
        DemoLandCover(catalog.labels)
