"""Panopticon's patch embedding: TorchGeo's forward vs geodino's, forward + backward.

TorchGeo's :class:`~torchgeo.models.PanopticonPE` makes a token of the channel attention's
width per band and patch and projects each to a key and a value;
:func:`geodino.models.channel_attention.channel_attention_tokens` computes the same function
of the same parameters with one projection per patch (module docstring). Both are timed on
the same module and batch, alternating within each round in one process; the ratio is
TorchGeo's time over geodino's. Sizes: ``bench`` is ``benchmarks/any_sensor_knn.py``'s
(channel attention 96 wide, 16 heads, 28-px crops), ``vitb`` Panopticon ViT-B/14's (2,304 wide,
16 heads) on 224-px crops.

Also printed: the activations autograd keeps for the backward (parameters and input left
out). Measured on the CPU (torch 2.14.1, 1 thread, the second core busy with other runs,
13 bands): vitb at batch 2: TorchGeo 3.50 s, geodino 0.18-0.20 s (18-19x), keeping 185 MiB
vs 24 MiB; bench at batch 16: TorchGeo 4.8-5.4 ms, geodino 3.2-3.6 ms (1.5-1.6x), keeping
1.0 MiB vs 2.4 MiB (a patch's 196 pixels outnumber the attention's 96 values there).

    python benchmarks/channel_attention.py --sizes bench vitb --rounds 5
    python benchmarks/channel_attention.py --sizes vitb --batch 16 --device cuda
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torchgeo.models.panopticon import PanopticonPE

from geodino.models.channel_attention import channel_attention_tokens

#: name -> (channel-attention width, heads, ViT width, crop size)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "bench": (96, 16, 48, 28),
    "vitb": (2304, 16, 768, 224),
}


def timed(step: Callable[[], Tensor], device: torch.device) -> float:
    """Seconds of a forward and backward, synchronised on accelerators."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def saved_bytes(step: Callable[[], Tensor], held: list[Tensor]) -> int:
    """Bytes of the activations autograd keeps for the backward of one forward.

    Each storage counts once; those of ``held`` (the parameters and the input, which exist
    whatever the forward) not at all.
    """
    skip = {tensor.untyped_storage().data_ptr() for tensor in held}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def measure(size: str, batch: int, bands: int, rounds: int, device: torch.device) -> str:
    """One line of the table: both forwards timed and their activations counted."""
    width, heads, dim, crop = SIZES[size]
    torch.manual_seed(0)
    module = PanopticonPE(
        attn_dim=width,
        embed_dim=dim,
        patch_size=14,
        chnfus_cfg={"attn_cfg": {"num_heads": heads}},
        img_size=crop,
    ).to(device)
    images = torch.randn(batch, bands, crop, crop, device=device)
    ids = torch.linspace(443.0, 2202.0, bands, device=device).expand(batch, -1)
    variants: dict[str, Callable[[], Tensor]] = {
        "torchgeo": lambda: module({"imgs": images, "chn_ids": ids.clone()}),
        "geodino": lambda: channel_attention_tokens(module, images, ids.clone()),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():  # warm-up
        timed(step, device)
    for _ in range(rounds):
        for name, step in variants.items():
            module.zero_grad(set_to_none=True)
            times[name].append(timed(step, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    held = [images, *module.parameters()]
    kept = {name: saved_bytes(step, held) / 2**20 for name, step in variants.items()}
    return (
        f"{size}: batch {batch} x {bands} bands x {crop} px, attention {width} wide: "
        f"torchgeo {median['torchgeo'] * 1e3:.1f} ms, geodino {median['geodino'] * 1e3:.1f} "
        f"ms ({median['torchgeo'] / median['geodino']:.2f}x); kept for backward: torchgeo "
        f"{kept['torchgeo']:.1f} MiB, geodino {kept['geodino']:.1f} MiB "
        f"(ratio {kept['torchgeo'] / kept['geodino']:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batch", type=int, default=None, help="default: 16 bench, 2 vitb")
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        batch = args.batch or (16 if size == "bench" else 2)
        print(measure(size, batch, args.bands, args.rounds, torch.device(args.device)))


if __name__ == "__main__":
    main()
