"""The step switches of DINOv2Task, timed on their own: AdamW kernels, channels-last, compile.

- ``adamw``: one AdamW step over the parameters of a ViT-S/14 student and its DINO head
  (65,536 prototypes), with the ``for_loop``, ``foreach`` and ``fused`` kernels.
- ``channels_last``: forward + backward of the patch-embedding convolution on a batch of
  global crops, contiguous vs channels-last input and weight.
- ``compile``: forward + backward of the student's crops (``forward_tokens_packed``), eager
  vs ``torch.compile`` after its warm-up (the compile time is printed apart).

Variants alternate within each round in one process.

    python benchmarks/step_switches.py --parts adamw channels_last --rounds 5
    python benchmarks/step_switches.py --parts compile --batch 2 --device cuda
"""

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from geodino.models import DINOHead, TimmViTEncoder, as_encoder


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synchronised on accelerators."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def report(name: str, times: dict[str, list[float]]) -> None:
    """One line: median seconds of each variant and its speed relative to the first."""
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = next(iter(medians.values()))
    row = ", ".join(f"{k} {m * 1000:.1f} ms ({base / m:.2f}x)" for k, m in medians.items())
    print(f"{name}: {row}", flush=True)


def student(device: torch.device, in_chans: int) -> TimmViTEncoder:
    """A ViT-S/14 with 4 registers, as DINOv2Task builds it."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch14_reg4_dinov2", in_chans=in_chans, num_classes=0, dynamic_img_size=True
    )
    model = as_encoder(vit)
    assert isinstance(model, TimmViTEncoder)
    return model.to(device)


def adamw(args: argparse.Namespace, device: torch.device) -> None:
    """AdamW kernels over the student's and head's parameters."""
    model = torch.nn.ModuleDict(
        {"backbone": student(device, args.in_chans), "head": DINOHead(384, 65536).to(device)}
    )
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    optimizers = {k: torch.optim.AdamW(params, lr=1e-4, **v) for k, v in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for round_ in range(args.rounds + 1):
        for name, optimizer in optimizers.items():
            elapsed = timed(optimizer.step, device)
            if round_:
                times[name].append(elapsed)
    report(f"AdamW step, {sum(p.numel() for p in params) / 1e6:.1f} M parameters", times)


def channels_last(args: argparse.Namespace, device: torch.device) -> None:
    """The patch-embedding convolution, contiguous vs channels-last."""
    conv = student(device, args.in_chans).patch_embed.proj
    images = torch.randn(2 * args.batch, args.in_chans, 224, 224, device=device)
    variants = {
        "contiguous": (conv, images),
        "channels_last": (
            torch.nn.Conv2d(args.in_chans, 384, 14, 14).to(
                device, memory_format=torch.channels_last
            ),
            images.contiguous(memory_format=torch.channels_last),
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for round_ in range(args.rounds + 1):
        for name, (layer, x) in variants.items():
            elapsed = timed(lambda layer=layer, x=x: layer(x).sum().backward(), device)
            if round_:
                times[name].append(elapsed)
    report(f"patch embedding, {2 * args.batch} x {args.in_chans} x 224 x 224", times)


def compiled(args: argparse.Namespace, device: torch.device) -> None:
    """The student's crops, eager vs compiled."""
    model = student(device, args.in_chans)
    g = torch.randn(2 * args.batch, args.in_chans, 224, 224, device=device)
    lo = torch.randn(8 * args.batch, args.in_chans, 98, 98, device=device)
    forwards = {
        "eager": model.forward_tokens_packed,
        "compiled": torch.compile(model.forward_tokens_packed),
    }

    def step(forward: Callable[..., list[torch.Tensor]]) -> None:
        sum(t.sum() for t in forward([g, lo], [None, None])).backward()

    print(f"compile warm-up: {timed(lambda: step(forwards['compiled']), device):.1f} s", flush=True)
    times: dict[str, list[float]] = {k: [] for k in forwards}
    for round_ in range(args.rounds + 1):
        for name, forward in forwards.items():
            elapsed = timed(lambda forward=forward: step(forward), device)
            if round_:
                times[name].append(elapsed)
    report(f"student crops fwd+bwd, batch {args.batch}", times)


PARTS = {"adamw": adamw, "channels_last": channels_last, "compile": compiled}


def main() -> None:
    """Run the chosen parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--in-chans", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {args.threads} thread(s)")
    for part in args.parts:
        PARTS[part](args, device)


if __name__ == "__main__":
    main()
