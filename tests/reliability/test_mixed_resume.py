"""SIGKILL a real mixed-sensor `geodino fit` mid-step: it resumes to the straight run's weights.

Three sources (the demo's Sentinel-2, Sentinel-1 and 8-band scenes) with different band sets,
one source a step, a Panopticon backbone and spectral multi-crop, as ``configs/any_sensor.yaml``
at test size.
"""

from pathlib import Path

import pytest
import torch
import yaml
from harness import geodino

from geodino.demo import write_demo_catalog

STEPS, EVERY = 9, 3


def write_config(tmp: Path, run: str, callbacks: list[dict] | None = None) -> Path:
    config = yaml.safe_load(Path("configs/any_sensor.yaml").read_text())
    root = str(tmp / "demo")
    config["trainer"].update(
        accelerator="cpu",
        max_steps=STEPS,
        deterministic=True,
        default_root_dir=str(tmp / run),
        enable_progress_bar=False,
        logger=False,
        callbacks=callbacks or [],
    )
    model = config["model"]["init_args"]
    model["model_kwargs"].update(img_size=28, embed_dim=32, depth=2, attn_dim=32)
    model.update(
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        lr_reference_batch=8,
        checkpoint_every_n_steps=EVERY,
        keep_last_k=10,
    )
    data = config["data"]["init_args"]
    for dataset in data["datasets"]:
        dataset["init_args"]["paths"] = root
    data.update(
        aoi=f"{root}/aoi.gpkg",
        chip_size=28,
        min_coverage=0.5,
        max_nodata=0.5,
        batch_size=4,
        num_workers=0,
        statistics_chips=4,
    )
    data["multicrop"].update(global_crops_size=28, local_crops_size=14, local_crops_number=2)
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == STEPS
    return state["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_step_of_a_mixed_sensor_run_resumes_exactly(tmp_path: Path) -> None:
    write_demo_catalog(tmp_path / "demo", seed=0, scene_size=64)
    # three real runs on a shared CPU: generous timeouts
    straight = geodino("fit", "--config", str(write_config(tmp_path, "straight")), timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    kill = [{"class_path": "faults.KillMidStep", "init_args": {"step": 5}}]
    killed = geodino("fit", "--config", str(write_config(tmp_path, "killed", kill)), timeout=900)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == EVERY
    resumed = geodino(
        "fit",
        "--config",
        str(write_config(tmp_path, "killed")),
        "--ckpt_path",
        "last",
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
