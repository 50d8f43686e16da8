"""Multi-crop samples/s: geodino's batched MultiCrop against per-sample pipelines, same run.

Every pipeline gets the same batch, does the same recipe per sample: 2 global + N local
random resized crops (anti-aliased), a horizontal flip, a random quarter turn, brightness /
contrast jitter with p 0.8 and a 9-tap Gaussian blur with p 1.0 / 0.1 / 0.5, as DINOv2 forks
do it per image with torchvision v2 (on tensors) or numpy (and albumentations when installed),
and returns the same view-major batches the model needs.
Pipelines run in turns, ``--repeats`` rounds; the best round of each is reported, with the CPU
seconds it used (the fair figure on a shared machine).

Then multi-crop's share of a training step: a few ``DINOv2Task`` steps (``--model``, same
bands and crop sizes, ``--step-precision``) through a Lightning ``Trainer`` on batches cropped
once beforehand and held on the device, so that the step leaves multi-crop out; the share is
geodino's multi-crop seconds per sample over the step's seconds per sample (target <= 10 %).
``--step-batch`` may be smaller than ``--batch``: per-sample times scale it to ``--batch``
(on a GPU a small step batch runs below full use, so use the training batch there).

On the CPU, glibc's allocator returns the large crop buffers to the kernel after every batch;
``MALLOC_MMAP_MAX_=0`` keeps them in the heap (measured 17 -> 63 samples/s for Kornia's
batched augmentations)::

    MALLOC_MMAP_MAX_=0 python benchmarks/multicrop.py --batch 32 --bands 13 --size 256 \\
        [--device cuda] [--threads 2] [--json OUT]
    python benchmarks/multicrop.py --device cuda --batch 64 --step-batch 64 \\
        --step-precision bf16-mixed --skip numpy
"""

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

GLOBAL_SCALE, LOCAL_SCALE = (0.32, 1.0), (0.05, 0.32)
BLUR_P = (1.0, 0.1, 0.5)

Pipeline = Callable[[torch.Tensor, torch.Generator], None]


def collate(crops: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sample crops [sample][view] stacked view-major, as MultiCrop returns them."""
    views = list(zip(*crops, strict=True))
    return {
        "global_crops": torch.stack([c for view in views[:2] for c in view]),
        "local_crops": torch.stack([c for view in views[2:] for c in view])
        if len(views) > 2
        else torch.empty(0),
    }


def geodino_batched(args: argparse.Namespace) -> Pipeline:
    """geodino's batched, on-device path (the ``optical`` preset)."""
    from geodino.transforms import MultiCrop

    crop = MultiCrop(
        global_crops_size=args.global_size,
        local_crops_size=args.local_size,
        local_crops_number=args.local_crops,
        interpolation=args.interpolation,
    )

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crop(images, generator)

    return run


def torchvision_per_sample(args: argparse.Namespace) -> Pipeline:
    """Per-image torchvision v2 transforms on tensors, the usual fork recipe."""
    from torchvision.transforms import v2

    def jitter(image: torch.Tensor) -> torch.Tensor:
        gain, contrast = (0.6 + 0.8 * torch.rand(2)).tolist()
        mean = image.mean((-2, -1), keepdim=True)
        return gain * (mean + contrast * (image - mean))

    def turn(image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(0, 4, ())), (-2, -1))

    def view(size: int, scale: tuple[float, float], blur: float) -> v2.Compose:
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.Lambda(turn),
                v2.RandomApply([v2.Lambda(jitter)], p=0.8),
                v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur),
            ]
        )

    g1 = view(args.global_size, GLOBAL_SCALE, BLUR_P[0])
    g2 = view(args.global_size, GLOBAL_SCALE, BLUR_P[1])
    local = view(args.local_size, LOCAL_SCALE, BLUR_P[2])

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crops = [
            [g1(image), g2(image), *(local(image) for _ in range(args.local_crops))]
            for image in images
        ]
        collate(crops)

    return run


def numpy_per_sample(args: argparse.Namespace) -> Pipeline:
    """Per-image numpy crops (area-averaged resize), flips, turns, jitter, separable blur."""
    rng = np.random.default_rng(0)

    def resize(image: np.ndarray, size: int) -> np.ndarray:
        # box filter along each axis as a matrix product: anti-aliased like the others
        def weights(n: int) -> np.ndarray:
            edges = np.linspace(0, n, size + 1)
            pos = np.arange(n + 1)
            cover = np.clip(
                np.minimum(edges[1:, None], pos[None, 1:])
                - np.maximum(edges[:-1, None], pos[None, :-1]),
                0,
                None,
            )
            return (cover / cover.sum(1, keepdims=True)).astype(np.float32)

        return weights(image.shape[1]) @ image @ weights(image.shape[2]).T

    def blur(image: np.ndarray) -> np.ndarray:
        taps = np.arange(-4, 5)
        kernel = np.exp(-0.5 * (taps / rng.uniform(0.1, 2.0)) ** 2).astype(np.float32)
        kernel /= kernel.sum()
        padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="reflect")
        rows = np.lib.stride_tricks.sliding_window_view(padded, 9, axis=2) @ kernel
        return np.lib.stride_tricks.sliding_window_view(rows, 9, axis=1) @ kernel

    def one(image: np.ndarray, size: int, scale: tuple[float, float], p_blur: float) -> np.ndarray:
        _, h, w = image.shape
        area = h * w * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(area / ratio))))
        cw = int(min(w, round(np.sqrt(area * ratio))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out = resize(image[:, top : top + ch, left : left + cw], size)
        if rng.random() < 0.5:
            out = out[:, :, ::-1]
        out = np.rot90(out, rng.integers(0, 4), axes=(1, 2))
        if rng.random() < 0.8:
            mean = out.mean((1, 2), keepdims=True)
            out = rng.uniform(0.6, 1.4) * (mean + rng.uniform(0.6, 1.4) * (out - mean))
        if rng.random() < p_blur:
            out = blur(out)
        return np.ascontiguousarray(out)

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crops = [
            [
                torch.from_numpy(one(image, args.global_size, GLOBAL_SCALE, BLUR_P[0])),
                torch.from_numpy(one(image, args.global_size, GLOBAL_SCALE, BLUR_P[1])),
                *(
                    torch.from_numpy(one(image, args.local_size, LOCAL_SCALE, BLUR_P[2]))
                    for _ in range(args.local_crops)
                ),
            ]
            for image in images.cpu().numpy()
        ]
        collate(crops)

    return run


def albumentations_per_sample(args: argparse.Namespace) -> Pipeline:
    """Per-image albumentations (HWC float32), the recipe's crops, flips, turns and blur."""
    import albumentations as A

    def view(size: int, scale: tuple[float, float], blur: float) -> "A.Compose":
        return A.Compose(
            [
                A.RandomResizedCrop(size=(size, size), scale=scale),
                A.HorizontalFlip(),
                A.RandomRotate90(),
                A.GaussianBlur(blur_limit=(9, 9), sigma_limit=(0.1, 2.0), p=blur),
            ]
        )

    g1 = view(args.global_size, GLOBAL_SCALE, BLUR_P[0])
    g2 = view(args.global_size, GLOBAL_SCALE, BLUR_P[1])
    local = view(args.local_size, LOCAL_SCALE, BLUR_P[2])

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crops = [
            [
                torch.from_numpy(t(image=image)["image"]).permute(2, 0, 1)
                for t in (g1, g2, *[local] * args.local_crops)
            ]
            for image in images.cpu().numpy().transpose(0, 2, 3, 1)
        ]
        collate(crops)

    return run


def step_times(args: argparse.Namespace) -> list[tuple[float, float]]:
    """Wall and CPU seconds of each timed ``DINOv2Task`` step on pre-cropped batches.

    Every step goes through the task's own losses, backward, per-module clipping, AdamW and
    EMA update, run by a Lightning ``Trainer`` at ``--step-precision``.
    """
    from lightning.pytorch import Callback, LightningDataModule, Trainer

    from geodino.tasks import DINOv2Task
    from geodino.transforms import MultiCrop

    class StepClock(Callback):
        """Wall and process CPU seconds from each batch's start to the end of its step."""

        def __init__(self) -> None:
            self.start = (0.0, 0.0)
            self.seconds: list[tuple[float, float]] = []

        def _now(self) -> tuple[float, float]:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter(), time.process_time()

        def on_train_batch_start(self, *_: Any) -> None:
            self.start = self._now()

        def on_train_batch_end(self, *_: Any) -> None:
            end = self._now()
            self.seconds.append((end[0] - self.start[0], end[1] - self.start[1]))

    class CroppedBatches(LightningDataModule):
        """One multi-crop batch, already normalised and on the device, served every step."""

        def __init__(self, batch: dict[str, torch.Tensor], batch_size: int, steps: int) -> None:
            super().__init__()
            self.batch, self.batch_size, self.steps = batch, batch_size, steps

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader([self.batch] * self.steps, batch_size=None)

    device = torch.device(args.device)
    task = DINOv2Task(
        model=args.model,
        in_chans=args.bands,
        head_out_dim=args.head_out_dim,
        model_kwargs={"img_size": args.global_size},
    )
    patch = task.patch_size
    if args.global_size % patch or args.local_size % patch:
        raise SystemExit(
            f"--global-size {args.global_size} and --local-size {args.local_size} "
            f"must be multiples of {args.model}'s patch size {patch} (e.g. 224 "
            "and 98), as DINOv2Task requires."
        )
    crop = MultiCrop(
        global_crops_size=args.global_size,
        local_crops_size=args.local_size,
        local_crops_number=args.local_crops,
        interpolation=args.interpolation,
    )
    images = torch.rand(
        args.step_batch,
        args.bands,
        args.size,
        args.size,
        generator=torch.Generator().manual_seed(1),
    ).to(device)
    crops = crop(images, torch.Generator().manual_seed(1))
    batch = {k: ((v - v.mean()) / v.std()).contiguous() for k, v in crops.items()}
    total = args.step_warmup + args.step_steps
    clock = StepClock()
    with tempfile.TemporaryDirectory() as root:  # the task's summary files land here
        trainer = Trainer(
            max_steps=total,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.step_precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
            default_root_dir=root,
        )
        trainer.fit(task, CroppedBatches(batch, args.step_batch, total))
    return clock.seconds[args.step_warmup :]


def timed(fn: Pipeline, images: torch.Tensor, seed: int) -> tuple[float, float]:
    """Wall and process CPU seconds of one pass."""
    generator = torch.Generator().manual_seed(seed)
    if images.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn(images, generator)
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Run every pipeline in turns and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument(
        "--local-size",
        type=int,
        default=98,
        help="local crop side (a multiple of the model's patch for the step)",
    )
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and BLAS threads (default: their own defaults)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["torchvision", "numpy", "step"],
        help="pipelines to leave out (step: the share of a DINOv2Task step)",
    )
    parser.add_argument(
        "--model", default="vit_small_patch14_reg4_dinov2", help="DINOv2Task backbone for the step"
    )
    parser.add_argument(
        "--head-out-dim", type=int, default=65536, help="DINO head prototypes for the step"
    )
    parser.add_argument(
        "--step-batch",
        type=int,
        default=None,
        help="samples per DINOv2Task step (>= 2; default: --batch on a GPU, "
        "4 on the CPU); times are scaled per sample",
    )
    parser.add_argument("--step-steps", type=int, default=3, help="timed steps; best reported")
    parser.add_argument("--step-warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument(
        "--step-precision",
        default="32-true",
        choices=["32-true", "bf16-mixed", "16-mixed"],
        help="Lightning precision of the step (bf16-mixed: bf16 autocast)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.step_batch is None:
        args.step_batch = args.batch if args.device.startswith("cuda") else min(args.batch, 4)
    if "step" not in args.skip and args.step_batch < 2:
        parser.error("--step-batch must be >= 2 (DINOv2Task's KoLeo loss needs 2 samples)")
    if args.threads:
        torch.set_num_threads(args.threads)
        if importlib.util.find_spec("threadpoolctl") is not None:
            from threadpoolctl import threadpool_limits

            # numpy's BLAS threads would otherwise spin on the CPUs the others are timed on
            threadpool_limits(args.threads)
    device = torch.device(args.device)
    images = (
        torch.rand(
            args.batch, args.bands, args.size, args.size, generator=torch.Generator().manual_seed(0)
        ).to(device)
        * 3000
    )

    pipelines = {"geodino batched": geodino_batched(args)}
    if "torchvision" not in args.skip:
        pipelines["torchvision v2 per sample"] = torchvision_per_sample(args)
    if "numpy" not in args.skip:
        pipelines["numpy per sample"] = numpy_per_sample(args)
    if importlib.util.find_spec("albumentations") is not None:
        pipelines["albumentations per sample"] = albumentations_per_sample(args)
    for fn in pipelines.values():  # warm-up: lazy imports, allocator, kernels
        timed(fn, images[:2], 0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
    for round_ in range(args.repeats):
        for name, fn in pipelines.items():
            times[name].append(timed(fn, images, round_))

    rows = {}
    for name, runs in times.items():
        walls = [wall for wall, _ in runs]
        best_wall, best_cpu = min(runs)
        rows[name] = {
            "samples_per_s": args.batch / best_wall,
            "samples_per_s_median": args.batch / statistics.median(walls),
            "cpu_s_per_sample": best_cpu / args.batch,
        }
    base = rows.get("torchvision v2 per sample")
    for row in rows.values():
        row["vs_torchvision"] = row["samples_per_s"] / base["samples_per_s"] if base else None
        row["cpu_vs_torchvision"] = (
            base["cpu_s_per_sample"] / row["cpu_s_per_sample"] if base else None
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"multi-crop: batch {args.batch} x {args.bands} x {args.size}^2 -> 2 x "
        f"{args.global_size} + {args.local_crops} x {args.local_size}, {device}, "
        f"{torch.get_num_threads()} threads, MALLOC_MMAP_MAX_="
        f"{os.environ.get('MALLOC_MMAP_MAX_', 'unset')}, load {load:.1f}, "
        f"best of {args.repeats}"
    )
    print(
        f"{'pipeline':<28} {'samples/s':>10} {'median':>8} {'vs tv':>7} "
        f"{'cpu ms/sample':>14} {'cpu vs tv':>10}"
    )
    for name, row in rows.items():
        ratio = f"{row['vs_torchvision']:.2f}" if base else "-"
        cpu_ratio = f"{row['cpu_vs_torchvision']:.2f}" if base else "-"
        print(
            f"{name:<28} {row['samples_per_s']:>10.1f} {row['samples_per_s_median']:>8.1f} "
            f"{ratio:>7} {1000 * row['cpu_s_per_sample']:>14.1f} {cpu_ratio:>10}"
        )
    share = None
    if "step" not in args.skip:
        steps = step_times(args)
        best_wall, best_cpu = min(steps)
        crop_s = args.batch / rows["geodino batched"]["samples_per_s"]
        step_s = best_wall / args.step_batch * args.batch
        crop_cpu = rows["geodino batched"]["cpu_s_per_sample"]
        step_cpu = best_cpu / args.step_batch
        share = {
            "model": args.model,
            "precision": args.step_precision,
            "step_batch": args.step_batch,
            "steps_timed": len(steps),
            "multicrop_s_per_batch": crop_s,
            "step_s_per_batch": step_s,
            "step_s_per_batch_median": statistics.median(w for w, _ in steps)
            / args.step_batch
            * args.batch,
            "share": crop_s / step_s,
            # on a shared CPU the CPU seconds are the fairer figure
            "share_cpu": crop_cpu / step_cpu if device.type == "cpu" else None,
            "target": 0.10,
            "passed": crop_s / step_s <= 0.10,
        }
        print(
            f"\nshare of a step: DINOv2Task {args.model}, {args.step_precision}, step batch "
            f"{args.step_batch} scaled to {args.batch}, best of {len(steps)} steps "
            "(crops made beforehand)"
        )
        print(
            f"{'multi-crop s/batch':>19} {'step s/batch':>13} {'share':>7} {'target':>7}"
            + (f" {'CPU-s share':>12}" if share["share_cpu"] is not None else "")
        )
        print(
            f"{crop_s:>19.3f} {step_s:>13.3f} {100 * share['share']:>6.1f}% "
            f"{'<= 10%':>7} {'PASS' if share['passed'] else 'FAIL'}"
            + (f" {100 * share['share_cpu']:>11.1f}%" if share["share_cpu"] is not None else "")
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": rows,
                    "step_share": share,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "threads": torch.get_num_threads(),
                    "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_"),
                    "load_average": load,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
