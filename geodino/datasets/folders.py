"""Non-geo sources: folders of ``.npy`` tiles, class-folder images, JSON-annotated images."""

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from torchgeo.datasets import NonGeoDataset

from geodino.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
Transform = Callable[[dict[str, Any]], dict[str, Any]]


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
            with rasterio.open(path) as src:
                return src.read()
        with Image.open(path) as image:
            array = np.asarray(image)
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


def _inside(root: Path, relative: str, where: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(
            f"{where}: img_path {relative!r} points outside the image root {root}; paths "
            "must stay inside it (no '..' or absolute paths)."
        )
    return path


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
        """Find the arrays and check the first one's shape."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder; point `root` at a folder of .npy files.")
        self.files = sorted(self.root.rglob("*.npy"))
        if not self.files:
            raise DataError(f"no *.npy files under {self.root}.")
        self.nodata = nodata
        self.transforms = transforms
        first = self._load(self.files[0])
        self.band_names = _band_names(band_names, first.shape[2], self.files[0])

    def _load(self, path: Path) -> np.ndarray:
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise DataError(
                f"{path} holds pickled Python objects ({error}); geodino refuses them. Save "
                "plain numeric arrays (np.save of an (H, W, C) numeric array)."
            ) from None
        except Exception as error:
            raise DataError(f"{path} cannot be read as a .npy array ({error}).") from None
        if array.ndim != 3:
            raise DataError(
                f"{path} has shape {array.shape}; geodino expects (H, W, C) arrays. Add a channel "
                "axis (array[..., None]) or move the channels last."
            )
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{path} has dtype {array.dtype}; a numeric array is expected.")
        return array

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
        array = self._load(path)
        if array.shape[2] != len(self.band_names):
            raise DataError(
                f"{path} has {array.shape[2]} channels but the folder's first array has "
                f"{len(self.band_names)}; keep one channel count per folder."
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
        ids: dict[str, int] = {}
        for number, line in enumerate(labels.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                class_id, name = line.split(",", 1)
                ids[name.strip()] = int(class_id)
            except ValueError:
                raise DataError(
                    f"{labels} line {number}: {line!r} is not 'class_id,class_name'."
                ) from None
        self.classes = [""] * (max(ids.values()) + 1)
        for name, class_id in ids.items():
            self.classes[class_id] = name
        self.samples: list[tuple[Path, int]] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if folder.name not in ids:
                raise DataError(
                    f"class folder {folder} is not listed in {labels}; add a line "
                    f"'<id>,{folder.name}' or remove the folder."
                )
            self.samples += [
                (p, ids[folder.name]) for p in sorted(folder.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}.")
        self.targets = [label for _, label in self.samples]
        self.transforms = transforms
        first = read_image(self.samples[0][0])
        self.band_names = _band_names(band_names, first.shape[0], self.samples[0][0])

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
            "image": torch.from_numpy(read_image(path).astype(np.float32)),
            "label": torch.tensor(label),
        }
        return self.transforms(sample) if self.transforms else sample


class AnnotatedImages(NonGeoDataset):
    """Images listed in a JSON annotation file with labels and groups.

    The file reads ``{"metainfo": {"classes": [...]}, "data_list": [{"img_path": ...,
    "gt_label": ..., "group_id": ...}, ...]}``; ``img_path`` is relative to ``root`` and may
    not leave it.

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
        self.samples: list[Path] = []
        self.targets: list[int] = []
        self.groups: list[str] = []
        for i, entry in enumerate(entries):
            where = f"{self.ann_file} data_list[{i}]"
            missing = {"img_path", "gt_label"} - set(entry)
            if missing:
                raise DataError(f"{where} lacks keys {sorted(missing)}.")
            label = int(entry["gt_label"])
            if not 0 <= label < len(self.classes):
                raise DataError(
                    f"{where}: gt_label {label} is outside the {len(self.classes)} classes "
                    f"{self.classes}."
                )
            path = _inside(self.root, str(entry["img_path"]), where)
            if not path.is_file():
                raise DataError(f"{where}: image {path} does not exist.")
            self.samples.append(path)
            self.targets.append(label)
            self.groups.append(str(entry.get("group_id", i)))
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
            "image": torch.from_numpy(read_image(self.samples[index]).astype(np.float32)),
            "label": torch.tensor(self.targets[index]),
        }
        return self.transforms(sample) if self.transforms else sample
