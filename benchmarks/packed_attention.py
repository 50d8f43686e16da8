"""Student crops in two passes vs one packed pass per block: forward + backward time.

The student of a DINOv2 step encodes 2B masked global crops and LB local crops. This
benchmark times that encoding (forward, then backward of the tokens' sum), with variants
alternating inside one process, round after round:

- ``separate``: two passes, global crops then local crops (``forward_tokens`` twice).
- ``packed``: geodino's ``forward_tokens_packed``: all tokens concatenated for the token-wise
  layers, one scaled-dot-product attention call per crop size (block-diagonal attention
  without padding or masked scores).
- ``dense_mask``: all tokens in one sequence through timm's blocks with a boolean
  block-diagonal ``attn_mask`` (SDPA computes every masked score: quadratic in all tokens).
- ``nested``: as ``packed``, but one attention call over a jagged nested tensor
  (``torch.nested``, ``layout=torch.jagged``).

FlexAttention is not timed: torch 2.14 has no backward for it on the CPU.

    python benchmarks/packed_attention.py --batch 2 8 --rounds 3
    python benchmarks/packed_attention.py --size tiny --batch 8 --variants separate packed

Measured (torch 2.14.1, CPU, 1 thread, under load from another benchmark on the second core;
ratios are over variants alternating in the same process; ViT-S/14 reg4, 2 x 224 + 8 x 98
crops, fp32, forward + backward of the student's crops, median of the rounds):

see the table at the end of this docstring, filled in by the runs of this branch.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from geodino.models import TimmViTEncoder, as_encoder
from geodino.models.timm_adapter import Segments, packable

SIZES = {
    "vits": {"model": "vit_small_patch14_reg4_dinov2", "kwargs": {}, "global": 224, "local": 98},
    "tiny": {
        "model": "vit_small_patch14_reg4_dinov2",
        "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 56},
        "global": 56,
        "local": 28,
    },
}

Encode = Callable[[TimmViTEncoder, Tensor, Tensor, Tensor, Tensor], list[Tensor]]


def separate(
    model: TimmViTEncoder, g: Tensor, lo: Tensor, masks: Tensor, token: Tensor
) -> list[Tensor]:
    """Two passes, as the objective runs without packing."""
    return [model.forward_tokens(g, masks, token), model.forward_tokens(lo)]


def packed(
    model: TimmViTEncoder, g: Tensor, lo: Tensor, masks: Tensor, token: Tensor
) -> list[Tensor]:
    """geodino's packed pass."""
    return model.forward_tokens_packed([g, lo], [masks, None], token)


def _embedded(
    model: TimmViTEncoder, g: Tensor, lo: Tensor, masks: Tensor, token: Tensor
) -> list[Tensor]:
    return [model._embed(g, masks, token), model._embed(lo, None, None)]


def _split(x: Tensor, segments: Segments) -> list[Tensor]:
    parts = torch.split(x, [c * n for c, n in segments])
    return [p.reshape(c, n, -1) for p, (c, n) in zip(parts, segments, strict=True)]


def dense_mask(
    model: TimmViTEncoder, g: Tensor, lo: Tensor, masks: Tensor, token: Tensor
) -> list[Tensor]:
    """One sequence of all tokens with a block-diagonal boolean mask through timm's blocks."""
    groups = _embedded(model, g, lo, masks, token)
    segments = tuple((t.shape[0], t.shape[1]) for t in groups)
    ids = torch.cat(
        [
            torch.arange(c).repeat_interleave(n) + offset
            for (c, n), offset in zip(segments, (0, segments[0][0]), strict=True)
        ]
    )
    mask = ids[:, None] == ids[None, :]
    x = torch.cat([t.reshape(1, -1, t.shape[-1]) for t in groups], dim=1)
    for block in model.blocks:
        x = block(x, attn_mask=mask)
    return _split(model.norm(x)[0], segments)


def nested(
    model: TimmViTEncoder, g: Tensor, lo: Tensor, masks: Tensor, token: Tensor
) -> list[Tensor]:
    """Token-wise layers on the packed tokens, one jagged-tensor SDPA call per block."""
    groups = _embedded(model, g, lo, masks, token)
    segments = tuple((t.shape[0], t.shape[1]) for t in groups)
    lengths = torch.tensor([n for c, n in segments for _ in range(c)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in groups])
    for block in model.blocks:
        assert packable(block)
        attn = block.attn
        heads, dim = attn.num_heads, attn.head_dim
        qkv = attn.qkv(block.norm1(x)).reshape(-1, 3, heads, dim).unbind(1)
        # jagged SDPA wants contiguous values; in torch 2.14.1 it probes cuDNN even for CPU
        # tensors, which fails on machines without a CUDA driver: name the CPU's backend
        q, k, v = (
            torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets).transpose(1, 2)
            for t in qkv
        )
        with sdpa_kernel(SDPBackend.MATH if x.device.type == "cpu" else list(SDPBackend)):
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).values()
        x = x + block.ls1(attn.proj(out.reshape(-1, heads * dim)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return _split(model.norm(x), segments)


VARIANTS: dict[str, Encode] = {
    "separate": separate,
    "packed": packed,
    "dense_mask": dense_mask,
    "nested": nested,
}


def main() -> None:
    """Time the variants and print one row per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="vits")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--bf16", action="store_true", help="under CPU bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = SIZES[args.size]
    torch.manual_seed(0)
    vit = timm.create_model(
        spec["model"], pretrained=False, dynamic_img_size=True, **spec["kwargs"]
    )
    model = as_encoder(vit)
    assert isinstance(model, TimmViTEncoder)
    model.train()
    token = torch.randn(1, model.embed_dim) * 0.02
    print(f"torch {torch.__version__}, {args.size}, {args.threads} thread(s), bf16={args.bf16}")
    for batch in args.batch:
        g = torch.randn(2 * batch, 3, spec["global"], spec["global"])
        lo = torch.randn(args.local_crops * batch, 3, spec["local"], spec["local"])
        grid = spec["global"] // model.patch_size
        masks = torch.rand(2 * batch, grid * grid, generator=torch.Generator().manual_seed(1)) < 0.3
        times: dict[str, list[float]] = {name: [] for name in args.variants}
        reference: list[Tensor] = []
        for round_ in range(args.rounds + 1):  # round 0 warms up and checks outputs
            for name in args.variants:
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                    out = VARIANTS[name](model, g, lo, masks, token)
                sum(o.float().sum() for o in out).backward()
                elapsed = time.perf_counter() - start
                if round_ == 0:
                    outs = [o.detach().float() for o in out]
                    if not reference:
                        reference = outs
                    diff = max(
                        (a - b).abs().max().item() for a, b in zip(outs, reference, strict=True)
                    )
                    print(f"  batch {batch} {name}: max |tokens - {args.variants[0]}| = {diff:.2e}")
                else:
                    times[name].append(elapsed)
        base = statistics.median(times[args.variants[0]])
        row = ", ".join(
            f"{name} {statistics.median(t):.3f} s ({base / statistics.median(t):.2f}x)"
            for name, t in times.items()
        )
        print(f"batch {batch}: {row}", flush=True)


if __name__ == "__main__":
    main()
