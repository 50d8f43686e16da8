"""``geodino demo`` end to end: catalog, pretraining, k-NN, export, embeddings and maps."""

from pathlib import Path

import geopandas as gpd
import rasterio
import yaml

from geodino.demo import DEMO_CONFIG, run_demo


def test_demo_writes_the_whole_story(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "demo", max_steps=2)
    run = Path(summary.splitlines()[0].split(" in ", 1)[1])
    assert (run / "export" / "backbone.safetensors").is_file() and str(run / "export") in summary
    for name in ("embeddings.tif", "embeddings.parquet", "maps/pca_map.tif", "metrics.json"):
        assert (run / name).is_file() and str(run / name) in summary, name
    scene = sorted((tmp_path / "demo" / "data" / "s2").glob("*.tif"))[0]
    width = yaml.safe_load(DEMO_CONFIG.read_text())["model"]["init_args"]["model_kwargs"][
        "embed_dim"
    ]
    with rasterio.open(run / "embeddings.tif") as emb, rasterio.open(scene) as src:
        assert emb.crs == src.crs and emb.count == width
        assert emb.transform == src.transform @ src.transform.scale(14)
    assert len(gpd.read_parquet(run / "embeddings.parquet")) > 0
    for name in ("training_curves.png", "maps/pca_map.png", "maps/attention.png"):
        assert (run / name).stat().st_size > 1000
    assert "pretrained" in summary and "random init" in summary
