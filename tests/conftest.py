"""Test-wide settings and fixtures shared by every test module."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("GDAL_CACHEMAX", "64")

#: ``../shared`` beside the project root: real satellite samples and DINOv2 reference outputs.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real satellite samples; tests using it skip when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"real satellite samples not available at {path}")
    return path


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """File of official DINOv2 outputs; tests using it skip when it is absent."""
    path = SHARED / "reference" / "dinov2_reference.pt"
    if not path.is_file():
        pytest.skip(f"DINOv2 reference outputs not available at {path}")
    return path
