"""Pretraining on the demo catalog learns features that random initialisation lacks."""

import json
from pathlib import Path

import pytest
import torch

from geodino.config import run_lightning_cli
from geodino.datasets.synthetic import write_demo_catalog
from geodino.demo import DEMO_CONFIG, evaluate_knn
from geodino.models import build_backbone


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not met yet: after the demo's 300 CPU steps the teacher's CLS k-NN accuracy was "
    "0.63-0.70 against 0.69 for the random-init ViT on the current catalog (0.55-0.66 vs 0.85 "
    "on the first one); the teacher targets stay near-uniform (entropy ~7.25 of log 2048 = "
    "7.62). See the issue note",
    strict=False,
)
def test_knn_of_pretrained_teacher_beats_random_init(tmp_path: Path) -> None:
    catalog = write_demo_catalog(tmp_path / "data", seed=0)
    cli = run_lightning_cli([
        "fit", "--config", str(DEMO_CONFIG),
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false",
        f"--data.init_args.dataset.init_args.paths={catalog.root}",
        f"--data.init_args.aoi={catalog.aoi}",
    ])
    hp = cli.model.hparams
    torch.manual_seed(0)
    random_init = build_backbone(hp["model"], hp["in_chans"], **hp["model_kwargs"])
    result = evaluate_knn(cli.model.model, random_init, catalog.root, cli.datamodule.statistics,
                          cli.datamodule.multicrop.global_crops_size)
    (tmp_path / "knn.json").write_text(json.dumps(result))
    assert result["test_chips"] > 100
    assert result["knn_accuracy_pretrained"] > result["knn_accuracy_random_init"] + 0.03, result
