"""Sentinel-2/1 layouts and the non-geo folder sources, on real files."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from geodino.datasets import (
    S2_BANDS,
    AnnotatedImages,
    ImageFolder,
    NpyFolder,
    Sentinel1,
    Sentinel2,
)
from geodino.errors import DataError


def write(path: Path, data: np.ndarray, res: float = 10.0, crs: str = "EPSG:32633",
          nodata: float | None = 0, descriptions: tuple[str, ...] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype, crs=crs, nodata=nodata,
                       transform=from_origin(400000, 5500000, res, res)) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions


def per_band_scene(root: Path, name: str, skip: str | None = None) -> None:
    for i, band in enumerate(S2_BANDS):
        if band == skip:
            continue
        res = 10 if band in ("B02", "B03", "B04", "B08") else 20 if band in (
            "B05", "B06", "B07", "B8A", "B11", "B12") else 60
        size = 600 // res
        write(root / name / f"{name}_{band}.tif",
              np.full((1, size, size), 100 * (i + 1), dtype="uint16"), res=res)


def query(ds, size: int = 30) -> tuple[slice, slice, slice]:
    res = ds.res[0]
    x, y, t = ds.bounds
    return (slice(x.start, x.start + size * res, res), slice(y.stop - size * res, y.stop, res), t)


def test_s2_per_band_files_at_three_resolutions(tmp_path: Path) -> None:
    per_band_scene(tmp_path, "T33UUP_20200101")
    ds = Sentinel2(tmp_path)
    assert ds.band_names == list(S2_BANDS) and ds.res == (10.0, 10.0) and ds.nodata == 0
    image = ds[query(ds)]["image"]
    assert image.shape == (13, 30, 30)
    expected = torch.tensor([100.0 * (i + 1) for i in range(13)])
    torch.testing.assert_close(image[:, 10, 10], expected)
    sub = Sentinel2(tmp_path, bands=["B4", "B03", "b2"])
    assert sub.band_names == ["B04", "B03", "B02"]
    torch.testing.assert_close(sub[query(sub)]["image"][:, 0, 0], torch.tensor([400.0, 300, 200]))


def test_s2_scene_missing_a_band(tmp_path: Path) -> None:
    per_band_scene(tmp_path, "sceneA")
    per_band_scene(tmp_path, "sceneB", skip="B8A")
    with pytest.raises(DataError, match=r"sceneB.*lacks band file\(s\) \['B8A'\]"):
        Sentinel2(tmp_path)


def test_s2_stacks_12_and_13_bands(tmp_path: Path) -> None:
    write(tmp_path / "l2a" / "s.tif", np.ones((12, 20, 20), dtype="uint16"))
    assert "B10" not in Sentinel2(tmp_path / "l2a").band_names
    write(tmp_path / "l1c" / "s.tif", np.ones((13, 20, 20), dtype="uint16"))
    assert Sentinel2(tmp_path / "l1c").band_names == list(S2_BANDS)
    write(tmp_path / "odd" / "s.tif", np.ones((5, 20, 20), dtype="uint16"))
    with pytest.raises(DataError, match="has 5 bands; a Sentinel-2 stack has 13"):
        Sentinel2(tmp_path / "odd")


def test_s1_to_db_and_nodata(tmp_path: Path) -> None:
    data = np.full((2, 20, 20), 0.01, dtype="float32")
    data[1] = 0.001
    data[:, :2] = 0  # nodata rows
    write(tmp_path / "s1.tif", data, descriptions=("VV", "VH"))
    ds = Sentinel1(tmp_path, to_db=True)
    assert ds.band_kind == "sar" and np.isnan(ds.nodata)
    image = ds[query(ds, 20)]["image"]
    torch.testing.assert_close(image[:, 10, 10], torch.tensor([-20.0, -30.0]))
    assert torch.isnan(image[:, :2]).all()
    linear = Sentinel1(tmp_path)
    assert linear[query(linear, 20)]["image"][0, 10, 10] == pytest.approx(0.01)


def test_real_bigearthnet_sen1floods11_ssl4eo(shared_data: Path) -> None:
    ben = Sentinel2(shared_data / "bigearthnet" / "BigEarthNet-S2-Example")
    assert len(ben.band_names) == 12 and "B10" not in ben.band_names and ben.res == (10.0, 10.0)
    assert len(ben.index) == 6
    s1 = Sentinel1(shared_data / "bigearthnet" / "BigEarthNet-S1-Example")
    assert s1.band_names == ["VV", "VH"]
    floods = Sentinel2(shared_data / "sen1floods11_sample" / "Spain_7370579_S2Hand.tif")
    assert floods.band_names == list(S2_BANDS)
    with rasterio.open(shared_data / "sen1floods11_sample" / "Spain_7370579_S2Hand.tif") as src:
        expected = src.read(window=((0, 16), (0, 16))).astype("float32")
    np.testing.assert_array_equal(floods[query(floods, 16)]["image"].numpy(), expected)
    floods_s1 = Sentinel1(shared_data / "sen1floods11_sample" / "Spain_7370579_S1Hand.tif")
    assert np.isnan(floods_s1.nodata)
    ssl = Sentinel2(shared_data / "ssl4eo_style_sig_gis" / "imgs")
    assert ssl.band_names == list(S2_BANDS) and len(ssl.index) == 2


def test_npy_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4))
    np.save(tmp_path / "b.npy", np.zeros((2, 3, 4), dtype="uint16"))
    ds = NpyFolder(tmp_path)
    assert len(ds) == 2 and ds.band_names == ["B1", "B2", "B3", "B4"]
    image = ds[0]["image"]
    assert image.shape == (4, 2, 3) and image[1, 0, 2] == 9  # (H, W, C) -> (C, H, W)


def test_npy_wrong_rank_and_pickles_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"flat\.npy has shape \(4, 4\).*\(H, W, C\)"):
        NpyFolder(tmp_path)
    (tmp_path / "flat.npy").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.npy", "wb") as handle:
        np.lib.format.write_array(handle, np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        NpyFolder(tmp_path)
    assert not marker.exists()
    assert pickle  # the payload above is a real pickle


def test_image_folder(tmp_path: Path) -> None:
    for name, value in (("water", 10), ("crop", 200)):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8, 3), value, dtype="uint8")).save(tmp_path / name / "x.png")
    with pytest.raises(DataError, match="labels.txt is missing"):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("0,water\n")
    with pytest.raises(DataError, match="crop is not listed"):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("0,water\n1,crop\n")
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["water", "crop"] and sorted(ds.targets) == [0, 1]
    sample = ds[ds.targets.index(1)]
    assert sample["label"] == 1 and sample["image"].shape == (3, 8, 8) and sample["image"].max() == 200


def test_annotated_images(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), i, dtype="uint8")).save(tmp_path / "img" / f"{i}.png")
    ann = {"metainfo": {"classes": ["a", "b"]}, "data_list": [
        {"img_path": f"img/{i}.png", "gt_label": i % 2, "group_id": f"g{i // 2}"} for i in range(3)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = AnnotatedImages(tmp_path / "ann.json")
    assert ds.targets == [0, 1, 0] and ds.groups == ["g0", "g0", "g1"] and ds[2]["label"] == 0
    ann["data_list"][0]["img_path"] = "../../etc/passwd"
    (tmp_path / "escape.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="outside the image root"):
        AnnotatedImages(tmp_path / "escape.json")
    (tmp_path / "nokeys.json").write_text(json.dumps({"data_list": []}))
    with pytest.raises(DataError, match="lacks 'metainfo.classes'"):
        AnnotatedImages(tmp_path / "nokeys.json")
    ann["data_list"] = [{"img_path": "img/0.png", "gt_label": 7}]
    (tmp_path / "label.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="gt_label 7 is outside"):
        AnnotatedImages(tmp_path / "label.json")
