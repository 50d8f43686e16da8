"""Multi-crop samples/s: geodino's batched MultiCrop vs per-sample pipelines, same run.

Per sample: 2 global + N local crops with random resized crops, flips and Gaussian blur,
as DINOv2 forks do it per image with torchvision v2 (on tensors) or numpy. Every pipeline
gets the same input batch. On the CPU set `MALLOC_MMAP_MAX_=0` for the allocator.

    python benchmarks/multicrop.py --batch 32 --bands 13 --size 256 [--device cuda] [--json OUT]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def geodino_batched(images: torch.Tensor, args: argparse.Namespace) -> None:
    """geodino's batched, on-device path."""
    from geodino.transforms import MultiCrop

    crop = MultiCrop(global_crops_size=args.global_size, local_crops_size=args.local_size,
                     local_crops_number=args.local_crops)
    crop(images, torch.Generator().manual_seed(0))


def torchvision_per_sample(images: torch.Tensor, args: argparse.Namespace) -> None:
    """Per-image torchvision v2 transforms, the usual fork recipe."""
    from torchvision.transforms import v2

    def view(size: int, scale: tuple[float, float], blur: float) -> v2.Compose:
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur),
        ])

    g1, g2 = view(args.global_size, (0.32, 1.0), 1.0), view(args.global_size, (0.32, 1.0), 0.1)
    local = view(args.local_size, (0.05, 0.32), 0.5)
    for image in images:
        g1(image), g2(image)
        for _ in range(args.local_crops):
            local(image)


def numpy_per_sample(images: torch.Tensor, args: argparse.Namespace) -> None:
    """Per-image numpy crops, nearest resize, flips and a separable blur (fork-style)."""
    rng = np.random.default_rng(0)
    arrays = images.cpu().numpy()

    def one(image: np.ndarray, size: int, scale: tuple[float, float], blur: float) -> np.ndarray:
        _, h, w = image.shape
        area = h * w * rng.uniform(*scale)
        side = int(min(h, w, np.sqrt(area)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        idx = np.linspace(0, side - 1, size).astype(int)
        out = image[:, top + idx][:, :, left + idx]
        if rng.random() < 0.5:
            out = out[:, :, ::-1]
        if rng.random() < blur:
            k = np.exp(-0.5 * (np.arange(-4, 5) / rng.uniform(0.1, 2.0)) ** 2)
            k /= k.sum()
            out = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 2, out)
            out = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, out)
        return out

    for image in arrays:
        one(image, args.global_size, (0.32, 1.0), 1.0)
        one(image, args.global_size, (0.32, 1.0), 0.1)
        for _ in range(args.local_crops):
            one(image, args.local_size, (0.05, 0.32), 0.5)


def rate(fn, images: torch.Tensor, args: argparse.Namespace) -> float:
    """Samples/s of one pipeline (one warm-up pass, then timed passes)."""
    fn(images[:2], args)
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.repeats):
        fn(images, args)
    if images.is_cuda:
        torch.cuda.synchronize()
    return args.repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    """Run every pipeline and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-numpy", action="store_true", help="the numpy pipeline is slow")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images = torch.rand(args.batch, args.bands, args.size, args.size, device=args.device) * 3000
    rows = {"geodino batched": rate(geodino_batched, images, args),
            "torchvision v2 per sample": rate(torchvision_per_sample, images, args)}
    if not args.skip_numpy:
        rows["numpy per sample"] = rate(numpy_per_sample, images, args)
    base = rows["torchvision v2 per sample"]
    print(f"multi-crop: batch {args.batch} x {args.bands} x {args.size}^2 -> 2 x "
          f"{args.global_size} + {args.local_crops} x {args.local_size}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'pipeline':<28} {'samples/s':>10} {'vs torchvision':>15}")
    for name, value in rows.items():
        print(f"{name:<28} {value:>10.1f} {value / base:>15.2f}")
    if args.json:
        args.json.write_text(json.dumps({"samples_per_s": rows, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
