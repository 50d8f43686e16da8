"""Loss side of a DINOv2 step, geodino vs the official code: centring, Sinkhorn-Knopp, losses.

Times, on the shapes of one training step, what comes after the heads: the teacher's targets
(Sinkhorn-Knopp or softmax centring, iBOT and DINO) and the DINO and iBOT losses with their
backward pass. Both sides run in this process on one thread, the official functions imported
from a checkout of facebookresearch/dinov2 (see ``official_dinov2.py``), calls alternating;
each figure is the median over ``--repeats``. The inputs are cosines over temperatures, as the
heads give them; the outputs of both sides are compared.

    python benchmarks/loss_side.py --official /tmp/dinov2            # batch 8: 620 x 65,536
    python benchmarks/loss_side.py --official /tmp/dinov2 --batch 64 --device cuda
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from official_dinov2 import import_official, single_process_group
from torch import Tensor

from geodino.losses import DINOLoss, iBOTPatchLoss

PATCHES = 256  # 224-px global crop, patch 14
TEACHER_TEMP = 0.04  # the warm-up temperature: the sharpest targets
STUDENT_TEMP = 0.1


def cosines(rows: int, cols: int, g: torch.Generator, device: torch.device) -> Tensor:
    """Head-like logits: cosines between random unit vectors of width 256."""
    a = F.normalize(torch.randn(rows, 256, generator=g), dim=-1).to(device)
    b = F.normalize(torch.randn(cols, 256, generator=g), dim=-1).to(device)
    return (a @ b.T).clamp_(-1, 1)


def masks_for(n_images: int, n_masked: int, g: torch.Generator) -> Tensor:
    """Masks of half the global crops with ``n_masked`` patches in all."""
    masks = torch.zeros(n_images, PATCHES, dtype=torch.bool)
    per_image = torch.full((n_images // 2,), n_masked // (n_images // 2))
    per_image[: n_masked - int(per_image.sum())] += 1
    for i, count in enumerate(per_image.tolist()):
        masks[2 * i, torch.randperm(PATCHES, generator=g)[:count]] = True
    return masks


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call (device synchronised) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def cases(args: argparse.Namespace, official: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each part: a callable per side (prepare outside the timing, run inside)."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    b, k = args.batch, args.prototypes
    n_masked = args.masked or round(77.5 * b)
    t_patch = cosines(n_masked, k, g, device)
    t_cls = cosines(2 * b, k, g, device)
    s_global = cosines(2 * b, k, g, device)
    s_local = cosines(args.local_crops * b, k, g, device)
    s_patch = cosines(n_masked, k, g, device)
    masks = masks_for(2 * b, n_masked, g).to(device)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    count = torch.tensor([float(n_masked)], device=device)

    o_dino, o_ibot = official["DINOLoss"](k).to(device), official["iBOTPatchLoss"](k).to(device)
    g_dino, g_ibot = DINOLoss(k).to(device), iBOTPatchLoss(k).to(device)

    def o_sk_ibot() -> Tensor:
        return o_ibot.sinkhorn_knopp_teacher(t_patch, TEACHER_TEMP, count.clone())

    def g_sk_ibot() -> Tensor:
        logits = t_patch.clone()  # the objective hands over logits it no longer needs
        return timed(
            lambda: g_ibot.sinkhorn_knopp_teacher(logits, TEACHER_TEMP, inplace=True), device
        )

    def o_sk_dino() -> Tensor:
        return o_dino.sinkhorn_knopp_teacher(t_cls, TEACHER_TEMP)

    def g_sk_dino() -> Tensor:
        logits = t_cls.clone()
        return timed(
            lambda: g_dino.sinkhorn_knopp_teacher(logits, TEACHER_TEMP, inplace=True), device
        )

    def o_softmax() -> Tensor:
        dino = o_dino.softmax_center_teacher(t_cls, TEACHER_TEMP)
        o_dino.update_center(t_cls)
        ibot = o_ibot.softmax_center_teacher(t_patch.unsqueeze(0), TEACHER_TEMP).squeeze(0)
        o_ibot.update_center(t_patch.unsqueeze(0))
        return torch.cat([dino, ibot])

    def g_softmax() -> Tensor:
        dino = g_dino.softmax_center_teacher(t_cls, TEACHER_TEMP)
        g_dino.update_center(t_cls)
        ibot = g_ibot.softmax_center_teacher(t_patch, TEACHER_TEMP)
        g_ibot.update_center(t_patch.unsqueeze(0))
        return torch.cat([dino, ibot])

    targets = o_dino.sinkhorn_knopp_teacher(t_cls, TEACHER_TEMP)
    crossed = torch.cat(targets.chunk(2)[::-1])
    patch_targets = o_ibot.sinkhorn_knopp_teacher(t_patch, TEACHER_TEMP, count.clone())

    def losses(dino: Any, ibot: Any) -> Callable[[], Tensor]:
        def run() -> Tensor:
            sg = s_global.clone().requires_grad_()
            sl = s_local.clone().requires_grad_()
            sp = s_patch.clone().requires_grad_()

            def step() -> Tensor:
                total = dino([sg], [crossed]) + dino(
                    list(sl.chunk(args.local_crops)), list(targets.chunk(2))
                )
                total = total + ibot.forward_masked(
                    sp,
                    patch_targets,
                    student_masks_flat=masks,
                    n_masked_patches=n_masked,
                    masks_weight=weights,
                )
                total.backward()
                return torch.cat(
                    [
                        total.detach().reshape(1),
                        sg.grad.flatten(),
                        sl.grad.flatten(),
                        sp.grad.flatten(),
                    ]
                )

            return timed(step, device)

        return run

    return {
        "Sinkhorn-Knopp, iBOT (masked patches)": {
            "shape": f"{n_masked} x {k}",
            "official": lambda: timed(o_sk_ibot, device),
            "geodino": g_sk_ibot,
        },
        "Sinkhorn-Knopp, DINO (class tokens)": {
            "shape": f"{2 * b} x {k}",
            "official": lambda: timed(o_sk_dino, device),
            "geodino": g_sk_dino,
        },
        "softmax centring + centre update": {
            "shape": f"{2 * b} + {n_masked} x {k}",
            "official": lambda: timed(o_softmax, device),
            "geodino": lambda: timed(g_softmax, device),
        },
        "DINO + iBOT losses, forward + backward": {
            "shape": f"{(2 + args.local_crops) * b} + {n_masked} x {k}",
            "official": losses(o_dino, o_ibot),
            "geodino": losses(g_dino, g_ibot),
        },
    }


def main() -> None:
    """Time every part on both sides and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official", type=Path, required=True, help="facebookresearch/dinov2 checkout"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--masked", type=int, default=0, help="masked patches (0: 77.5 x batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official = import_official(args.official)
    single_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    rows = []
    for name, case in cases(args, official).items():
        times: dict[str, list[float]] = {"official": [], "geodino": []}
        outputs: dict[str, Tensor] = {}
        for i in range(args.repeats + 1):  # the first call of each side warms up
            for side in ("official", "geodino") if i % 2 else ("geodino", "official"):
                seconds, outputs[side] = case[side]()
                if i:
                    times[side].append(seconds)
        diff = float((outputs["official"].float() - outputs["geodino"].float()).abs().max())
        row = {
            "part": name,
            "shape": case["shape"],
            "official_ms": 1000 * statistics.median(times["official"]),
            "geodino_ms": 1000 * statistics.median(times["geodino"]),
            "max_abs_diff": diff,
        }
        rows.append(row)
    print(
        f"loss side: batch {args.batch}, {args.prototypes} prototypes, {args.device}, "
        f"{args.threads} thread(s), median of {args.repeats}, "
        f"official xFormers: {official['xformers']}"
    )
    print(
        f"{'part':<42} {'shape':>22} {'official ms':>11} {'geodino ms':>10} {'ratio':>6} "
        f"{'max diff':>9}"
    )
    for row in rows:
        ratio = row["official_ms"] / row["geodino_ms"]
        print(
            f"{row['part']:<42} {row['shape']:>22} {row['official_ms']:>11.1f} "
            f"{row['geodino_ms']:>10.1f} {ratio:>5.2f}x {row['max_abs_diff']:>9.1e}"
        )
    print("ratio: official time / geodino time (above 1: geodino is faster)")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1)
        )


if __name__ == "__main__":
    main()
