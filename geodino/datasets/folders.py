"""Non-geo sources: folders of ``.npy`` tiles, class-folder images, JSON-annotated images."""

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torchgeo.datasets import NonGeoDataset

from geodino.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
Transform = Callable[[dict[str, Any]], dict[str, Any]]
_PIL_CONVERT = {"P": "RGB", "PA": "RGBA", "CMYK": "RGB", "1": "L"}


def read_image(path: Path) -> np.ndarray:
    """Read an image as (C, H, W): TIFFs with rasterio (any band count), others with PIL.

    Args:
        path: the image file.

    Returns:
        the pixel array.

    Raises:
        DataError: if the file cannot be read.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with warnings.catch_warnings():
                # plain (non-geo) TIFFs are expected here
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    pixels: np.ndarray = src.read()
                    return pixels
        with Image.open(path) as image:
            # palette and bilevel images hold indices, not intensities
            converted = _PIL_CONVERT.get(image.mode)
            if converted == "RGB" and "transparency" in image.info:
                converted = "RGBA"
            array = np.asarray(image.convert(converted) if converted else image)
    except Exception as error:
        raise DataError(
            f"{path} cannot be read as an image ({str(error).splitlines()[0]}); re-export or "
            "remove it."
        ) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _band_names(given: Sequence[str] | None, count: int, path: Path) -> list[str]:
    if given is None:
        return ["red", "green", "blue"] if count == 3 else [f"B{i + 1}" for i in range(count)]
    if len(given) != count:
        raise DataError(
            f"{path} has {count} bands but {len(given)} band names were given ({list(given)}); "
            "give one name per band."
        )
    return list(given)


def _image_sample(path: Path, band_names: Sequence[str]) -> torch.Tensor:
    array = read_image(path)
    if array.shape[0] != len(band_names):
        raise DataError(
            f"{path} has {array.shape[0]} bands but the source has {len(band_names)} "
            f"({list(band_names)}); keep one band count per source (convert the image, or "
            "move it to a separate source)."
        )
    return torch.from_numpy(array.astype(np.float32))


def _warn_ignored(ignored: Sequence[Path], where: Path) -> None:
    if ignored:
        log.warning(
            "%d file(s) under %s are not images in class folders and are not used: %s%s "
            "(images must be %s inside a class folder)",
            len(ignored),
            where,
            ", ".join(map(str, ignored[:5])),
            " ..." if len(ignored) > 5 else "",
            "/".join(IMAGE_SUFFIXES),
        )


def _inside(root: Path, relative: str, where: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(
            f"{where}: img_path {relative!r} points outside the image root {root}; paths "
            "must stay inside it (no '..' or absolute paths)."
        )
    return path


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file read from its header, refusing object (pickled) arrays.

    Args:
        path: the file.

    Returns:
        its (H, W, C) shape.

    Raises:
        DataError: for a file that is no numeric (H, W, C) ``.npy`` array.
    """
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            # format 3.0 differs from 2.0 only in allowing utf-8 field names
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(handle)
    except Exception as error:
        raise DataError(
            f"{path} is not a .npy array ({str(error).splitlines()[0]}); save tiles with "
            "np.save (not pickle, np.savez or tofile)."
        ) from None
    if dtype.hasobject:
        raise DataError(
            f"{path} holds pickled Python objects (dtype {dtype}); geodino refuses them (they "
            "can run code; it loads with allow_pickle=False). Save plain numeric arrays: "
            "np.save(path, array) with an (H, W, C) numeric array."
        )
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataError(f"{path} has dtype {dtype}; save a numeric (H, W, C) array.")
    if len(shape) != 3:
        raise DataError(
            f"{path} has shape {shape}; geodino expects (H, W, C) arrays. Add a channel axis "
            "(array[..., None]) or move the channels last (array.transpose(1, 2, 0))."
        )
    return shape


class NpyFolder(NonGeoDataset):
    """Every ``*.npy`` array under a folder, each shaped (H, W, C).

    Arrays are loaded with ``allow_pickle=False``: a pickled or object array is refused.

    Args:
        root: the folder (searched recursively).
        band_names: one name per channel (default ``B1``..``Bn``).
        nodata: value marking missing data, if any.
        transforms: applied to each sample.
    """

    def __init__(
        self,
        root: str | Path,
        band_names: Sequence[str] | None = None,
        nodata: float | None = None,
        transforms: Transform | None = None,
    ) -> None:
        """Find the arrays and check every header (shape, dtype) without loading them."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder; point `root` at a folder of .npy files.")
        self.files = sorted(self.root.rglob("*.npy"))
        if not self.files:
            raise DataError(
                f"no *.npy files under {self.root}; save each tile with np.save as an (H, W, C) "
                "array in that folder."
            )
        self.nodata = nodata
        self.transforms = transforms
        shapes = [_npy_shape(path) for path in self.files]
        channels = shapes[0][2]
        for path, shape in zip(self.files, shapes, strict=True):
            if shape[2] != channels:
                raise DataError(
                    f"{path} has {shape[2]} channels (shape {shape}) but {self.files[0]} has "
                    f"{channels}; keep one channel count per folder."
                )
        height, width = shapes[0][:2]
        if width == channels and height < width:
            log.warning(
                "%s has shape %s: read as H=%d, W=%d, C=%d. If its channels come first, save "
                "it as array.transpose(1, 2, 0) instead.",
                self.files[0],
                shapes[0],
                height,
                width,
                channels,
            )
        self.band_names = _band_names(band_names, channels, self.files[0])

    def __len__(self) -> int:
        """Number of arrays."""
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One array as ``{"image": (C, H, W) float32}``.

        Args:
            index: array index.

        Returns:
            the sample.
        """
        path = self.files[index]
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # changed or damaged since the header was checked
            raise DataError(
                f"{path} cannot be read as a .npy array ({error}); re-save it with np.save."
            ) from None
        if array.ndim != 3 or array.shape[2] != len(self.band_names):
            raise DataError(
                f"{path} now has shape {array.shape}; expected (H, W, {len(self.band_names)})."
            )
        sample = {"image": torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32))}
        return self.transforms(sample) if self.transforms else sample


class ImageFolder(NonGeoDataset):
    """Images in class folders (``root/<class_name>/<image>``) with a ``labels.txt``.

    ``labels.txt`` lists ``class_id,class_name`` per line; every class folder must appear in
    it. PNG/JPEG are read with PIL, TIFFs with rasterio (any band count).

    Args:
        root: the folder holding the class folders and ``labels.txt``.
        labels_file: name of the labels file inside ``root``.
        band_names: one name per band (default ``red, green, blue`` or ``B1``..``Bn``).
        transforms: applied to each sample.
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str = "labels.txt",
        band_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
    ) -> None:
        """Read the labels file and list the images."""
        self.root = Path(root)
        labels = self.root / labels_file
        if not labels.is_file():
            raise DataError(
                f"{labels} is missing; write one line 'class_id,class_name' per class folder."
            )
        ids = self._read_labels(labels)
        self.classes = [""] * (max(ids.values()) + 1)
        for name, class_id in ids.items():
            self.classes[class_id] = name
        self.samples: list[tuple[Path, int]] = []
        ignored: list[Path] = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_file():
                if entry.suffix.lower() in IMAGE_SUFFIXES:
                    ignored.append(entry)
                continue
            if entry.name not in ids:
                raise DataError(
                    f"class folder {entry} is not listed in {labels}; add a line "
                    f"'<id>,{entry.name}' or remove the folder."
                )
            for path in sorted(p for p in entry.rglob("*") if p.is_file()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.samples.append((path, ids[entry.name]))
                elif not path.name.startswith("."):
                    ignored.append(path)
        _warn_ignored(ignored, self.root)
        if not self.samples:
            raise DataError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}."
            )
        self.targets = [label for _, label in self.samples]
        self.transforms = transforms
        first = read_image(self.samples[0][0])
        self.band_names = _band_names(band_names, first.shape[0], self.samples[0][0])

    @staticmethod
    def _read_labels(labels: Path) -> dict[str, int]:
        """Class ids by class name from a ``class_id,class_name`` file.

        Args:
            labels: the labels file.

        Returns:
            the ids.

        Raises:
            DataError: for a malformed line or a duplicate id or name.
        """
        ids: dict[str, int] = {}
        for number, line in enumerate(labels.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw_id, raw_name = line.split(",", 1)
                class_id, name = int(raw_id), raw_name.strip()
            except ValueError:
                raise DataError(
                    f"{labels} line {number}: {line!r} is not 'class_id,class_name' "
                    "(e.g. '0,water')."
                ) from None
            if class_id < 0 or not name:
                raise DataError(
                    f"{labels} line {number}: {line!r} needs a class id >= 0 and a name."
                )
            if name in ids or class_id in ids.values():
                raise DataError(
                    f"{labels} line {number}: {line!r} repeats a class id or name; give each "
                    "class one line."
                )
            ids[name] = class_id
        if not ids:
            raise DataError(f"{labels} lists no classes; write one 'class_id,class_name' per line.")
        return ids

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One image and its label.

        Args:
            index: image index.

        Returns:
            ``{"image": (C, H, W) float32, "label": int64}``.
        """
        path, label = self.samples[index]
        sample = {
            "image": _image_sample(path, self.band_names),
            "label": torch.tensor(label, dtype=torch.int64),
        }
        return self.transforms(sample) if self.transforms else sample


class AnnotatedImages(NonGeoDataset):
    """Images listed in a JSON annotation file with labels and groups.

    The file reads ``{"metainfo": {"classes": [...]}, "data_list": [{"img_path": ...,
    "gt_label": ..., "group_id": ...}, ...]}``; ``img_path`` is relative to ``root`` and may
    not leave it, ``gt_label`` indexes ``classes``. ``group_id`` (e.g. a location or tile id,
    for splits that keep a group on one side) is required in every entry once one entry has
    it; a file without any makes each image its own group.

    Args:
        ann_file: the JSON annotation file.
        root: folder the image paths are relative to (default: the JSON file's folder).
        band_names: one name per band.
        transforms: applied to each sample.
    """

    def __init__(
        self,
        ann_file: str | Path,
        root: str | Path | None = None,
        band_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
    ) -> None:
        """Read and check the annotations."""
        self.ann_file = Path(ann_file)
        self.root = Path(root) if root is not None else self.ann_file.parent
        try:
            data = json.loads(self.ann_file.read_text())
        except FileNotFoundError:
            raise DataError(f"annotation file {self.ann_file} does not exist.") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{self.ann_file} is not valid JSON ({error}).") from None
        try:
            self.classes = list(data["metainfo"]["classes"])
            entries = data["data_list"]
        except (KeyError, TypeError):
            raise DataError(
                f"{self.ann_file} lacks 'metainfo.classes' or 'data_list'; expected "
                '{"metainfo": {"classes": [...]}, "data_list": [{"img_path", "gt_label", '
                '"group_id"}]}.'
            ) from None
        if not isinstance(entries, list):
            raise DataError(f"{self.ann_file}: 'data_list' must be a list of image entries.")
        if (
            not self.classes
            or not all(isinstance(c, str) for c in self.classes)
            or isinstance(data["metainfo"]["classes"], str)
        ):
            raise DataError(
                f"{self.ann_file}: metainfo.classes must be a non-empty list of class names, "
                f"got {data['metainfo']['classes']!r}."
            )
        grouped = sum(isinstance(e, dict) and "group_id" in e for e in entries)
        self.samples: list[Path] = []
        self.targets: list[int] = []
        self.groups: list[str] = []
        for i, entry in enumerate(entries):
            where = f"{self.ann_file} data_list[{i}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where} is {entry!r}, not an object with img_path and gt_label.")
            missing = {"img_path", "gt_label"} - set(entry)
            if grouped and "group_id" not in entry:
                missing.add("group_id")
            if missing:
                raise DataError(
                    f"{where} lacks keys {sorted(missing)}; each entry needs img_path, "
                    "gt_label and (when any entry has one) group_id."
                )
            label = entry["gt_label"]
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(
                    f"{where}: gt_label {label!r} is not an integer class index into "
                    f"{self.classes}."
                )
            if not 0 <= label < len(self.classes):
                raise DataError(
                    f"{where}: gt_label {label} is outside the {len(self.classes)} classes "
                    f"{self.classes}; fix the label or add the class to metainfo.classes."
                )
            path = _inside(self.root, str(entry["img_path"]), where)
            if not path.is_file():
                raise DataError(f"{where}: image {path} does not exist; fix img_path or root.")
            self.samples.append(path)
            self.targets.append(label)
            # without group ids each image is its own group
            self.groups.append(str(entry["group_id"]) if grouped else str(i))
        if not self.samples:
            raise DataError(f"{self.ann_file} lists no images.")
        self.transforms = transforms
        first = read_image(self.samples[0])
        self.band_names = _band_names(band_names, first.shape[0], self.samples[0])

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One image and its label.

        Args:
            index: image index.

        Returns:
            ``{"image": (C, H, W) float32, "label": int64}``.
        """
        sample = {
            "image": _image_sample(self.samples[index], self.band_names),
            "label": torch.tensor(self.targets[index], dtype=torch.int64),
        }
        return self.transforms(sample) if self.transforms else sample
