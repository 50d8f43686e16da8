"""Pretraining on the demo catalog learns features that random initialisation lacks."""

import json
from pathlib import Path

import pytest
import torch

from geodino.config import run_lightning_cli
from geodino.datasets.synthetic import write_demo_catalog
from geodino.demo import DEMO_CONFIG, evaluate_knn
from geodino.models import build_backbone

#: Random initialisations the pretrained teacher is compared with: one seed alone is not a
#: baseline (k-NN of random ViTs on this catalog spans 0.62-0.74 over five seeds at width 64).
RANDOM_SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not met yet: after the demo's 300 CPU steps the teacher's CLS k-NN accuracy is "
    "0.69-0.70 against 0.69 for a random-init ViT (width 192) and 0.62-0.74 over random seeds "
    "(width 64): pretraining keeps the spectral classes but leaves the two matched pairs, which "
    "only spatial structure separates, at chance. See the issue note",
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
    results = []
    for seed in RANDOM_SEEDS:
        torch.manual_seed(seed)
        random_init = build_backbone(hp["model"], hp["in_chans"], **hp["model_kwargs"])
        results.append(evaluate_knn(cli.model.model, random_init, catalog.root,
                                    cli.datamodule.statistics,
                                    cli.datamodule.multicrop.global_crops_size))
    (tmp_path / "knn.json").write_text(json.dumps(results))
    assert results[0]["test_chips"] > 100
    pretrained = results[0]["knn_accuracy_pretrained"]
    best_random = max(r["knn_accuracy_random_init"] for r in results)
    assert pretrained > best_random + 0.03, results
