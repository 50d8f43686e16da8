"""Images/s and peak memory of a DINOv2Task step vs a plain single-crop timm step.

Both run in the same process on the same device, on random 13-band chips held in memory so
that reading files does not enter the figure. The DINOv2 step includes the on-device
multi-crop (2 global + N local crops), iBOT masks, student and EMA teacher, heads and losses;
the baseline is one forward/backward/AdamW step of the same backbone on one crop per image.

    python benchmarks/train_step.py --model vit_small_patch14_reg4_dinov2 --batch 8 --steps 5
    python benchmarks/train_step.py --device cuda --precision bf16-mixed --batch 64
"""

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer


class InMemoryChips(torch.utils.data.Dataset):
    """Random uint16-like chips, fixed in memory."""

    def __init__(self, n: int, bands: int, size: int) -> None:
        self.images = torch.randint(200, 4000, (n, bands, size, size)).float()
        self.band_names = [f"B{i + 1}" for i in range(bands)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class StepTimer(Callback):
    """Times optimiser steps after a warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup


def peak_memory_mb(device: str) -> float:
    """Peak memory of the process (CPU: max RSS) or of the GPU allocator."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dinov2_step(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of DINOv2Task steps through a real Trainer."""
    from geodino.datamodules import FolderDINODataModule
    from geodino.tasks import DINOv2Task

    data = InMemoryChips(max(64, args.batch * 4), args.bands, args.chip)
    dm = FolderDINODataModule(
        data,
        batch_size=args.batch,
        statistics_chips=16,
        multicrop={
            "global_crops_size": args.global_size,
            "local_crops_size": args.local_size,
            "local_crops_number": args.local_crops,
        },
    )
    task = DINOv2Task(
        model=args.model,
        in_chans=args.bands,
        head_out_dim=args.head_out_dim,
        model_kwargs={"img_size": args.global_size},
    )
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        max_steps=args.warmup + args.steps,
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, dm)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - timer.start
    return {
        "images_per_s": timer.steps * args.batch / elapsed,
        "peak_mb": peak_memory_mb(args.device),
    }


def plain_step(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of a plain timm forward/backward/AdamW step on one global crop per image."""
    from geodino.models import build_backbone

    device = torch.device(args.device)
    model = build_backbone(args.model, args.bands, img_size=args.global_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.bands, args.global_size, args.global_size, device=device)
    dtype = torch.bfloat16 if "bf16" in args.precision else None
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.forward_features(x)[:, 0].float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "images_per_s": args.steps * args.batch / (time.perf_counter() - start),
        "peak_mb": peak_memory_mb(args.device),
    }


def main() -> None:
    """Run both steps and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch14_reg4_dinov2")
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chip", type=int, default=256)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--head-out-dim", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    plain = plain_step(args)
    dino = dinov2_step(args)
    print(
        f"train step: {args.model}, {args.bands} bands, batch {args.batch}, {args.device}, "
        f"{args.precision}, crops 2x{args.global_size} + {args.local_crops}x{args.local_size}"
    )
    print(f"{'step':<28} {'images/s':>9} {'peak MB':>9}")
    print(f"{'plain timm (1 crop)':<28} {plain['images_per_s']:>9.2f} {plain['peak_mb']:>9.0f}")
    print(f"{'DINOv2Task (multi-crop)':<28} {dino['images_per_s']:>9.2f} {dino['peak_mb']:>9.0f}")
    print(f"ratio DINOv2Task / plain: {dino['images_per_s'] / plain['images_per_s']:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plain": plain,
                    "dinov2": dino,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
