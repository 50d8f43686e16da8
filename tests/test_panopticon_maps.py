"""`geodino maps` with a wavelength-aware backbone: any subset of its bands, as embed and knn."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geodino.errors import DataError
from geodino.export import write_export
from geodino.inference import write_maps
from geodino.models import create_encoder

S2 = ["B02", "B03", "B04", "B08", "B11"]
SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 2, "attn_dim": 48, "attn_heads": 4}


def panopticon_export(out: Path) -> Path:
    """A small Panopticon backbone trained (here: initialised) on five Sentinel-2 bands."""
    torch.manual_seed(0)
    kwargs = {**SMALL, "img_size": 56, "sensors": ["sentinel2"]}
    model = create_encoder("panopticon_vitb14", len(S2), kwargs, band_names=S2)
    write_export(
        model.state_dict(),
        out,
        "panopticon_vitb14",
        len(S2),
        model_kwargs=kwargs,
        bands=S2,
        statistics={"band_names": S2, "mean": [1000.0] * 5, "std": [500.0] * 5},
    )
    return out


def write_scene(path: Path, bands: list[str]) -> Path:
    """A uint16 scene of random values whose band descriptions name its bands."""
    data = np.random.default_rng(0).integers(300, 3000, (len(bands), 56, 84)).astype("uint16")
    profile = {
        "driver": "GTiff",
        "width": 84,
        "height": 56,
        "count": len(bands),
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_200_000, 10, 10),
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(bands)
    return path


def test_maps_take_any_subset_of_a_wavelength_aware_backbones_bands(tmp_path: Path) -> None:
    export = panopticon_export(tmp_path / "export")
    rgbn = write_scene(tmp_path / "rgbn.tif", ["B04", "B03", "B02", "B08"])
    maps = write_maps(export, rgbn, tmp_path / "maps", chip_size=28)
    with rasterio.open(maps["pca_tif"]) as src:
        assert src.count == 3 and (src.height, src.width) == (4, 6)
    assert maps["attention_png"].is_file()
    # a band the backbone was not trained on is refused by name
    sar = write_scene(tmp_path / "vv.tif", ["VV"])
    with pytest.raises(DataError, match="'VV'"):
        write_maps(export, sar, tmp_path / "sar_maps", chip_size=28)
