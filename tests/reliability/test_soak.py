"""Long-run soak at small scale: thousands of CPU steps with loader workers.

Opt-in (``pytest -m soak``). A tiny DINOv2Task trains on a GeoTIFF catalog (local files, or
a STAC-GeoParquet catalog of COGs in the tests' S3 server on 127.0.0.1) with two
persistent loader workers and atomic checkpoints every 500 steps; every 100 steps the test
records the resident memory (RSS) of the main process and of the workers and their open
file descriptors. After warm-up the RSS must stay within 10 % of its warm-up value and no
process may hold more file descriptors than at warm-up. ``GEODINO_SOAK_STEPS`` changes the
length (default 5,000); the figures are printed and written to ``soak.json`` in the run folder.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from harness import write_catalog
from lightning.pytorch import Callback, Trainer

from geodino.datamodules import GeoDINODataModule
from geodino.datasets import MultiBandGeoTIFF, RemoteSettings, STACCatalog
from geodino.tasks import DINOv2Task
from tests.stac_catalogs import two_zone_scenes, write_items

STEPS = int(os.environ.get("GEODINO_SOAK_STEPS", "5000"))
WARMUP = max(100, STEPS // 10)
EVERY = 100
PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """Child processes (the loader workers) of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Probe(Callback):
    """Records RSS and open file descriptors of the main process and its workers."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step % EVERY:
            return
        me = os.getpid()
        workers = children(me)
        self.rows.append(
            {
                "step": step,
                "seconds": time.perf_counter() - self.start,
                "rss_mb": rss_mb(me),
                "workers_rss_mb": sum(rss_mb(w) for w in workers),
                "fds": fds(me),
                "worker_fds": [fds(w) for w in workers],
            }
        )


def local_tiles(tmp_path: Path, request: pytest.FixtureRequest) -> MultiBandGeoTIFF:
    write_catalog(tmp_path / "tiles")
    return MultiBandGeoTIFF(tmp_path / "tiles")


def s3_items(tmp_path: Path, request: pytest.FixtureRequest) -> STACCatalog:
    s3_server = request.getfixturevalue("s3_server")
    cogs = tmp_path / "cogs"
    scenes = two_zone_scenes(cogs)

    def href(path: Path) -> str:
        return s3_server.upload(path, "geodino-soak", str(path.relative_to(cogs)))

    remote = RemoteSettings(endpoint=s3_server.endpoint, https=False, virtual_hosting=False)
    catalog = write_items(scenes, tmp_path / "s3.parquet", href)
    return STACCatalog(catalog, bands=["B02", "red", "nir", "swir16"], remote=remote)


@pytest.mark.soak
@pytest.mark.parametrize("source", [local_tiles, s3_items], ids=["local", "s3"])
def test_soak_memory_and_file_handles_stay_flat(
    tmp_path: Path, request: pytest.FixtureRequest, source: Any
) -> None:
    dataset = source(tmp_path, request)
    model = DINOv2Task(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=4,
        model_kwargs={"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        checkpoint_every_n_steps=500,
        keep_last_k=2,
        lr_reference_batch=8,
    )
    data = GeoDINODataModule(
        dataset,
        chip_size=28,
        batch_size=4,
        num_workers=2,
        statistics_chips=8,
        multicrop={"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2},
    )
    probe = Probe()
    trainer = Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path / "run",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(model, data)
    assert trainer.global_step == STEPS
    rows = probe.rows
    warm = next(r for r in rows if r["step"] >= WARMUP)
    after = [r for r in rows if r["step"] >= WARMUP]
    summary = {
        "steps": STEPS,
        "seconds": rows[-1]["seconds"],
        "warmup_step": warm["step"],
        "rss_mb_at_warmup": warm["rss_mb"],
        "rss_mb_max_after": max(r["rss_mb"] for r in after),
        "rss_mb_last": rows[-1]["rss_mb"],
        "workers_rss_mb_at_warmup": warm["workers_rss_mb"],
        "workers_rss_mb_max_after": max(r["workers_rss_mb"] for r in after),
        "fds_at_warmup": warm["fds"],
        "fds_max_after": max(r["fds"] for r in after),
        "worker_fds_at_warmup": warm["worker_fds"],
        "worker_fds_max_after": max(max(r["worker_fds"], default=0) for r in after),
        "rows": rows,
    }
    (tmp_path / "run" / "soak.json").write_text(json.dumps(summary, indent=1))
    print({k: v for k, v in summary.items() if k != "rows"})
    assert len(warm["worker_fds"]) == 2, "two persistent loader workers"
    assert summary["rss_mb_max_after"] <= 1.10 * warm["rss_mb"]
    assert summary["workers_rss_mb_max_after"] <= 1.10 * warm["workers_rss_mb"]
    assert summary["fds_max_after"] <= warm["fds"]
    assert summary["worker_fds_max_after"] <= max(warm["worker_fds"])
