"""Multi-crop samples/s: geodino's batched MultiCrop against per-sample pipelines, same run.

Every pipeline gets the same batch, does the same recipe per sample: 2 global + N local
random resized crops (anti-aliased), a horizontal flip, a random quarter turn, brightness /
contrast jitter with p 0.8 and a 9-tap Gaussian blur with p 1.0 / 0.1 / 0.5, as DINOv2 forks
do it per image with torchvision v2 (on tensors) or numpy (and albumentations when installed),
and returns the same view-major batches the model needs.
Pipelines run in turns, ``--repeats`` rounds; the best round of each is reported, with the CPU
seconds it used (the fair figure on a shared machine).

On the CPU, glibc's allocator returns the large crop buffers to the kernel after every batch;
``MALLOC_MMAP_MAX_=0`` keeps them in the heap (measured 17 -> 63 samples/s for Kornia's
batched augmentations)::

    MALLOC_MMAP_MAX_=0 python benchmarks/multicrop.py --batch 32 --bands 13 --size 256 \\
        [--device cuda] [--threads 2] [--json OUT]
"""

import argparse
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

GLOBAL_SCALE, LOCAL_SCALE = (0.32, 1.0), (0.05, 0.32)
BLUR_P = (1.0, 0.1, 0.5)

Pipeline = Callable[[torch.Tensor, torch.Generator], None]


def collate(crops: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sample crops [sample][view] stacked view-major, as MultiCrop returns them."""
    views = list(zip(*crops, strict=True))
    return {"global_crops": torch.stack([c for view in views[:2] for c in view]),
            "local_crops": torch.stack([c for view in views[2:] for c in view])
            if len(views) > 2 else torch.empty(0)}


def geodino_batched(args: argparse.Namespace) -> Pipeline:
    """geodino's batched, on-device path (the ``optical`` preset)."""
    from geodino.transforms import MultiCrop

    crop = MultiCrop(global_crops_size=args.global_size, local_crops_size=args.local_size,
                     local_crops_number=args.local_crops, interpolation=args.interpolation)

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
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.Lambda(turn),
            v2.RandomApply([v2.Lambda(jitter)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur),
        ])

    g1 = view(args.global_size, GLOBAL_SCALE, BLUR_P[0])
    g2 = view(args.global_size, GLOBAL_SCALE, BLUR_P[1])
    local = view(args.local_size, LOCAL_SCALE, BLUR_P[2])

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crops = [[g1(image), g2(image), *(local(image) for _ in range(args.local_crops))]
                 for image in images]
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
            cover = np.clip(np.minimum(edges[1:, None], pos[None, 1:])
                            - np.maximum(edges[:-1, None], pos[None, :-1]), 0, None)
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
        crops = [[torch.from_numpy(one(image, args.global_size, GLOBAL_SCALE, BLUR_P[0])),
                  torch.from_numpy(one(image, args.global_size, GLOBAL_SCALE, BLUR_P[1])),
                  *(torch.from_numpy(one(image, args.local_size, LOCAL_SCALE, BLUR_P[2]))
                    for _ in range(args.local_crops))]
                 for image in images.cpu().numpy()]
        collate(crops)

    return run


def albumentations_per_sample(args: argparse.Namespace) -> Pipeline:
    """Per-image albumentations (HWC float32), the recipe's crops, flips, turns and blur."""
    import albumentations as A

    def view(size: int, scale: tuple[float, float], blur: float) -> "A.Compose":
        return A.Compose([
            A.RandomResizedCrop(size=(size, size), scale=scale),
            A.HorizontalFlip(), A.RandomRotate90(),
            A.GaussianBlur(blur_limit=(9, 9), sigma_limit=(0.1, 2.0), p=blur),
        ])

    g1 = view(args.global_size, GLOBAL_SCALE, BLUR_P[0])
    g2 = view(args.global_size, GLOBAL_SCALE, BLUR_P[1])
    local = view(args.local_size, LOCAL_SCALE, BLUR_P[2])

    def run(images: torch.Tensor, generator: torch.Generator) -> None:
        crops = [[torch.from_numpy(t(image=image)["image"]).permute(2, 0, 1)
                  for t in (g1, g2, *[local] * args.local_crops)]
                 for image in images.cpu().numpy().transpose(0, 2, 3, 1)]
        collate(crops)

    return run


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
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads (default: their own defaults)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["torchvision", "numpy"],
                        help="pipelines to leave out")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        if importlib.util.find_spec("threadpoolctl") is not None:
            from threadpoolctl import threadpool_limits

            # numpy's BLAS threads would otherwise spin on the CPUs the others are timed on
            threadpool_limits(args.threads)
    device = torch.device(args.device)
    images = torch.rand(args.batch, args.bands, args.size, args.size,
                        generator=torch.Generator().manual_seed(0)).to(device) * 3000

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
        rows[name] = {"samples_per_s": args.batch / best_wall,
                      "samples_per_s_median": args.batch / statistics.median(walls),
                      "cpu_s_per_sample": best_cpu / args.batch}
    base = rows.get("torchvision v2 per sample")
    for row in rows.values():
        row["vs_torchvision"] = row["samples_per_s"] / base["samples_per_s"] if base else None
        row["cpu_vs_torchvision"] = (base["cpu_s_per_sample"] / row["cpu_s_per_sample"]
                                     if base else None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"multi-crop: batch {args.batch} x {args.bands} x {args.size}^2 -> 2 x "
          f"{args.global_size} + {args.local_crops} x {args.local_size}, {device}, "
          f"{torch.get_num_threads()} threads, MALLOC_MMAP_MAX_="
          f"{os.environ.get('MALLOC_MMAP_MAX_', 'unset')}, load {load:.1f}, "
          f"best of {args.repeats}")
    print(f"{'pipeline':<28} {'samples/s':>10} {'median':>8} {'vs tv':>7} "
          f"{'cpu ms/sample':>14} {'cpu vs tv':>10}")
    for name, row in rows.items():
        ratio = f"{row['vs_torchvision']:.2f}" if base else "-"
        cpu_ratio = f"{row['cpu_vs_torchvision']:.2f}" if base else "-"
        print(f"{name:<28} {row['samples_per_s']:>10.1f} {row['samples_per_s_median']:>8.1f} "
              f"{ratio:>7} {1000 * row['cpu_s_per_sample']:>14.1f} {cpu_ratio:>10}")
    if args.json:
        args.json.write_text(json.dumps({
            "results": rows,
            "args": {k: str(v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_"),
            "load_average": load,
        }, indent=1))


if __name__ == "__main__":
    main()
