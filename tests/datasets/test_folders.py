"""Non-geo sources: folders of .npy tiles, class-folder images and JSON-annotated images."""

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import DataLoader

from geodino.datasets import AnnotatedImages, ImageFolder, NpyFolder
from geodino.errors import DataError


def png(path: Path, value: int, size: int = 8, mode: str = "RGB") -> Path:
    """A flat 8-bit image of one value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    array = np.full((size, size, channels), value, dtype="uint8").squeeze(
        -1 if channels == 1 else ()
    )
    Image.fromarray(array).save(path)
    return path


def plain_tiff(path: Path, data: np.ndarray) -> Path:
    """A TIFF without georeferencing, as camera or export tools write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=data.shape[1],
            width=data.shape[2],
            count=data.shape[0],
            dtype=data.dtype,
        ) as dst:
            dst.write(data)
    return path


def test_npy_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "b.npy", np.full((2, 3, 4), 65535, dtype="uint16"))
    ds = NpyFolder(tmp_path, nodata=65535)
    assert len(ds) == 2 and ds.band_names == ["B1", "B2", "B3", "B4"] and ds.nodata == 65535
    image = ds[0]["image"]
    assert image.dtype == torch.float32 and image.shape == (4, 2, 3)
    assert image[1, 0, 2] == 9 and image[3, 1, 2] == 23  # (H, W, C) -> (C, H, W)
    assert (ds[1]["image"] == 65535).all()
    named = NpyFolder(tmp_path, band_names=["b", "g", "r", "n"])
    batch = next(iter(DataLoader(named, batch_size=2)))
    assert batch["image"].shape == (2, 4, 2, 3)
    with pytest.raises(DataError, match=r"a\.npy has 4 bands but 2 band names"):
        NpyFolder(tmp_path, band_names=["b", "g"])


def test_npy_wrong_rank_channels_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \*\.npy files under .*np\.save"):
        NpyFolder(tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((4, 4, 3)))
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(
        DataError, match=r"flat\.npy has shape \(4, 4\); geodino expects \(H, W, C\)"
    ):
        NpyFolder(tmp_path)
    np.save(tmp_path / "flat.npy", np.zeros((4, 4, 5)))
    with pytest.raises(DataError, match=r"flat\.npy has 5 channels .* but .*a\.npy has 3"):
        NpyFolder(tmp_path)
    (tmp_path / "flat.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"flat\.npy is not a \.npy array"):
        NpyFolder(tmp_path)


def test_npy_channels_first_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    np.save(tmp_path / "a.npy", np.zeros((13, 32, 32), dtype="uint16"))
    with caplog.at_level(logging.WARNING, logger="geodino"):
        NpyFolder(tmp_path)
    assert "read as H=13, W=32, C=32" in caplog.text and "transpose(1, 2, 0)" in caplog.text
    with pytest.raises(DataError, match=r"a\.npy has 32 bands but 13 band names"):
        NpyFolder(tmp_path, band_names=[f"B{i}" for i in range(13)])


def test_npy_pickles_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.npy", "wb") as handle:
        np.lib.format.write_array(
            handle, np.array([[[Payload()]]], dtype=object), allow_pickle=True
        )
    with pytest.raises(
        DataError, match=r"evil\.npy holds pickled Python objects.*allow_pickle=False"
    ):
        NpyFolder(tmp_path)
    assert not marker.exists()


def test_image_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    png(tmp_path / "water" / "x.png", 10)
    png(tmp_path / "water" / "y.jpg", 12)
    png(tmp_path / "crop" / "x.png", 200)
    (tmp_path / "crop" / "notes.txt").write_text("field survey")
    (tmp_path / "labels.txt").write_text("0,water\n1,crop\n")
    with caplog.at_level(logging.WARNING, logger="geodino"):
        ds = ImageFolder(tmp_path)
    assert "notes.txt" in caplog.text, "files that are not used are named"
    assert ds.classes == ["water", "crop"] and ds.band_names == ["red", "green", "blue"]
    assert ds.targets == [1, 0, 0] and len(ds) == 3  # sorted folders: crop, water
    sample = ds[0]
    assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
    assert sample["label"] == 1 and sample["image"].shape == (3, 8, 8)
    assert (sample["image"] == 200).all() and sample["image"].dtype == torch.float32
    assert abs(float(ds[2]["image"].mean()) - 12) < 2  # the JPEG, lossy


def test_image_folder_multiband_tiff(tmp_path: Path) -> None:
    data = np.arange(5 * 6 * 7, dtype="uint16").reshape(5, 6, 7)
    plain_tiff(tmp_path / "forest" / "a.tif", data)
    plain_tiff(tmp_path / "urban" / "b.TIFF", data + 1)
    (tmp_path / "labels.txt").write_text("3,urban\n0,forest\n")
    names = ["b", "g", "r", "re", "n"]
    ds = ImageFolder(tmp_path, band_names=names)
    assert ds.classes == ["forest", "", "", "urban"] and ds.targets == [0, 3]
    np.testing.assert_array_equal(ds[0]["image"].numpy(), data)
    assert ds[1]["label"] == 3 and ds.band_names == names
    plain_tiff(tmp_path / "urban" / "c.tif", data[:3])
    with pytest.raises(DataError, match=r"c\.tif has 3 bands but the source has 5"):
        ImageFolder(tmp_path, band_names=names)[2]


def test_image_folder_bad_labels(tmp_path: Path) -> None:
    png(tmp_path / "water" / "x.png", 10)
    png(tmp_path / "crop" / "x.png", 200)
    with pytest.raises(
        DataError, match=r"labels\.txt is missing; write one line 'class_id,class_name'"
    ):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("0,water\n")
    with pytest.raises(
        DataError,
        match=r"class folder .*crop is not listed in .*labels\.txt; add a line '<id>,crop'",
    ):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("0,water\n0,crop\n")
    with pytest.raises(DataError, match=r"line 2: '0,crop' repeats a class id"):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("water\n")
    with pytest.raises(DataError, match=r"line 1: 'water' is not 'class_id,class_name'"):
        ImageFolder(tmp_path)
    (tmp_path / "labels.txt").write_text("0,water\n1,crop\n")
    (tmp_path / "crop" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"crop/x\.png cannot be read as an image"):
        ImageFolder(tmp_path)


def annotated(tmp_path: Path, entries: list[dict], classes: list[str] | None = None) -> Path:
    path = tmp_path / f"ann{len(list(tmp_path.glob('ann*.json')))}.json"
    path.write_text(
        json.dumps({"metainfo": {"classes": classes or ["a", "b"]}, "data_list": entries})
    )
    return path


def test_annotated_images(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / "img" / f"{i}.png", 10 * i)
    entries = [
        {"img_path": f"img/{i}.png", "gt_label": i % 2, "group_id": i // 2} for i in range(3)
    ]
    ds = AnnotatedImages(annotated(tmp_path, entries))
    assert ds.classes == ["a", "b"] and ds.targets == [0, 1, 0] and ds.groups == ["0", "0", "1"]
    sample = ds[1]
    assert sample["label"] == 1 and sample["label"].dtype == torch.int64
    assert (sample["image"] == 10).all() and sample["image"].shape == (3, 8, 8)
    # image paths relative to another root
    elsewhere = tmp_path / "meta"
    elsewhere.mkdir()
    moved = annotated(elsewhere, entries)
    assert len(AnnotatedImages(moved, root=tmp_path)) == 3
    ungrouped = AnnotatedImages(
        annotated(
            tmp_path,
            [{"img_path": "img/0.png", "gt_label": 0}, {"img_path": "img/1.png", "gt_label": 1}],
        )
    )
    assert ungrouped.groups == ["0", "1"], "without group ids each image is its own group"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"img_path": "../../etc/passwd", "gt_label": 0}],
            r"'\.\./\.\./etc/passwd' points outside the image root",
        ),
        ([{"img_path": "/etc/passwd", "gt_label": 0}], r"points outside the image root"),
        ([{"gt_label": 0}], r"data_list\[0\] lacks keys \['img_path'\]"),
        (
            [
                {"img_path": "img/0.png", "gt_label": 0, "group_id": "g"},
                {"img_path": "img/0.png", "gt_label": 0},
            ],
            r"data_list\[1\] lacks keys \['group_id'\]",
        ),
        (
            [{"img_path": "img/0.png", "gt_label": 7}],
            r"gt_label 7 is outside the 2 classes \['a', 'b'\]",
        ),
        (
            [{"img_path": "img/0.png", "gt_label": "b"}],
            r"gt_label 'b' is not an integer class index",
        ),
        ([{"img_path": "img/9.png", "gt_label": 0}], r"image .*img/9\.png does not exist"),
        ([], r"lists no images"),
    ],
)
def test_annotated_images_bad_entries(tmp_path: Path, entries: list[dict], message: str) -> None:
    png(tmp_path / "img" / "0.png", 1)
    with pytest.raises(DataError, match=message):
        AnnotatedImages(annotated(tmp_path, entries))


def test_annotated_images_bad_files(tmp_path: Path) -> None:
    (tmp_path / "nokeys.json").write_text(json.dumps({"data_list": []}))
    with pytest.raises(DataError, match=r"nokeys\.json lacks 'metainfo\.classes' or 'data_list'"):
        AnnotatedImages(tmp_path / "nokeys.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        AnnotatedImages(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"missing\.json does not exist"):
        AnnotatedImages(tmp_path / "missing.json")
    (tmp_path / "cls.json").write_text(json.dumps({"metainfo": {"classes": "ab"}, "data_list": []}))
    with pytest.raises(DataError, match=r"metainfo\.classes must be a non-empty list"):
        AnnotatedImages(tmp_path / "cls.json")


def test_docs_pages_run(run_doc_page: Callable[[str], dict]) -> None:
    npy = run_doc_page("sources/npy.md")
    assert isinstance(npy["ds"], NpyFolder)
    folders = run_doc_page("sources/image-folders.md")
    assert isinstance(folders["ds"], ImageFolder) and isinstance(folders["ann"], AnnotatedImages)
