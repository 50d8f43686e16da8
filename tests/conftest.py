"""Test-wide settings and fixtures shared by every test module."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("GDAL_CACHEMAX", "64")

#: ``../shared`` beside the project root: real satellite samples the repository cannot ship.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

#: Outputs of the official DINOv2 code, written by ``scripts/dinov2_reference.py``.
DINOV2_REFERENCE = Path(__file__).resolve().parent / "data" / "dinov2_reference.pt"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real satellite samples; tests using it skip when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(
            f"real satellite samples (BigEarthNet, Sen1Floods11, SSL4EO, rasterio test data) "
            f"are not part of the repository and were not found at {path}"
        )
    return path


@pytest.fixture(scope="module")
def dinov2_reference() -> dict:
    """Inputs and outputs of the official DINOv2 losses and backbone (tests/data)."""
    import torch

    return torch.load(DINOV2_REFERENCE, weights_only=True)


#: Bands and statistics of the tiny exported backbone that downstream tests share.
TINY_BANDS = ["B02", "B03", "B04", "B08"]


def write_tiny_export(out: Path, seed: int = 0, patch: int = 14, registers: int = 4) -> Path:
    """Write a geodino export folder of a tiny random timm DINOv2 ViT (4 bands, width 32).

    Args:
        out: folder to write.
        seed: seed of the weights.
        patch: patch size.
        registers: register tokens.

    Returns:
        the folder.
    """
    import timm
    import torch

    from geodino.export import write_export

    name = "vit_small_patch14_reg4_dinov2" if patch == 14 else "vit_small_patch16_224"
    kwargs = {"img_size": 2 * patch, "embed_dim": 32, "depth": 2, "num_heads": 2}
    if patch != 14:
        kwargs["reg_tokens"] = registers
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, in_chans=len(TINY_BANDS), **kwargs)
    statistics = {
        "band_names": TINY_BANDS,
        "mean": [900.0, 1000.0, 1100.0, 2000.0],
        "std": [300.0, 300.0, 350.0, 600.0],
        "nodata": 0.0,
    }
    write_export(
        model.state_dict(),
        out,
        name,
        len(TINY_BANDS),
        model_kwargs=kwargs,
        bands=TINY_BANDS,
        statistics=statistics,
    )
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A geodino export folder of a tiny random patch-14 DINOv2 ViT with 4 registers."""
    return write_tiny_export(tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def tiny_export_writer():
    """:func:`write_tiny_export`, for tests that need other patch sizes or seeds."""
    return write_tiny_export


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 for the session (tests/servers.py)."""
    from tests.servers import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_proxy(s3_server):
    """A fault-injecting proxy in front of :func:`s3_server`, fresh for each test."""
    from tests.servers import FaultProxy

    with FaultProxy(s3_server.port) as proxy:
        yield proxy
