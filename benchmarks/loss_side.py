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
from official_dinov2 import import_official, keep_cuda_calls_on_the_cpu, single_process_group
from torch import Tensor, nn

from geodino.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss

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

    heads = heads_case(args, official, device)
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
        **heads,
    }


class StubBackbone(nn.Module):
    """Fixed backbone outputs in the official format (the heads' phase alone)."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: Any, masks: Any = None, is_training: bool = True) -> Any:
        return self.outputs["list"] if isinstance(x, list) else self.outputs["single"]


def heads_case(
    args: argparse.Namespace, official: dict[str, Any], device: torch.device
) -> dict[str, dict[str, Any]]:
    """Heads + targets + losses (forward) of a step, on fixed backbone tokens, both sides.

    The official side is ``SSLMetaArch.forward_backward`` with stub backbones and no
    backward pass; geodino's is ``DINOv2Objective`` with encoders that return the same
    tokens. Both take the same masks (the official collate's).
    """
    from geodino.models import DINOHead
    from geodino.tasks.objective import Branch, Criteria, DINOv2Objective

    b, k, dim, lc = args.batch, args.prototypes, 384, args.local_crops
    g = torch.Generator().manual_seed(1)
    generator = official["MaskingGenerator"](input_size=(16, 16), max_num_patches=128)
    samples = [
        ({"global_crops": [torch.zeros(1)] * 2, "local_crops": [torch.zeros(1)] * lc}, ())
        for _ in range(b)
    ]
    batch = official["collate"](samples, (0.1, 0.5), 0.5, torch.float32, 256, generator)
    masks = batch["collated_masks"].to(device)
    cls_g = torch.randn(2 * b, dim, generator=g).to(device)
    patches_g = torch.randn(2 * b, PATCHES, dim, generator=g).to(device)
    cls_l = torch.randn(lc * b, dim, generator=g).to(device)
    cfg = official["get_cfg"](
        student={"arch": "vit_small", "patch_size": 14, "num_register_tokens": 4},
        train={"centering": "sinkhorn_knopp"},
        compute_precision={"grad_scaler": False},
        dino={"head_n_prototypes": k},
        ibot={"head_n_prototypes": k},
        crops={"local_crops_number": lc},
    )
    model = official["SSLMetaArch"](cfg).to(device)
    model.need_to_synchronize_fsdp_streams = False
    model.backprop_loss = lambda loss: None

    def official_outputs() -> None:
        def out(cls: Tensor, patches: Tensor) -> dict[str, Tensor]:
            return {"x_norm_clstoken": cls, "x_norm_patchtokens": patches}

        sg, sp, sl = (t.clone().requires_grad_() for t in (cls_g, patches_g, cls_l))
        model.student.backbone = StubBackbone({"list": [out(sg, sp), out(sl, sl[:, None])]})
        model.teacher.backbone = StubBackbone({"single": out(cls_g, patches_g)})

    student = nn.ModuleDict({"dino_head": DINOHead(dim, k)}).to(device)
    teacher = nn.ModuleDict({"dino_head": DINOHead(dim, k)}).to(device).requires_grad_(False)
    criteria = Criteria(DINOLoss(k), iBOTPatchLoss(k), KoLeoLoss())
    objective = DINOv2Objective()

    def branch(heads: nn.ModuleDict, tokens: dict[int, Tensor]) -> Branch:
        def split(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return t[:, 0], t[:, 1:5], t[:, 5:]

        return Branch(
            lambda crops, m: tokens[crops.shape[0]], split, heads["dino_head"], heads["dino_head"]
        )

    def tokens(cls: Tensor, patches: Tensor) -> Tensor:
        return torch.cat([cls[:, None], cls[:, None].expand(-1, 4, -1), patches], dim=1)

    dtype = torch.bfloat16 if "bf16" in args.heads_precision else None

    def run_official() -> tuple[float, Tensor]:
        official_outputs()
        data = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        data["collated_global_crops"] = torch.zeros(2 * b, 1, device=device)
        data["collated_local_crops"] = torch.zeros(lc * b, 1, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            seconds, out = timed(lambda: model.forward_backward(data, teacher_temp=0.07), device)
        return seconds, torch.stack([v.detach().float() for v in out.values()])

    def run_geodino() -> tuple[float, Tensor]:
        t_tokens = {2 * b: tokens(cls_g, patches_g)}
        s_tokens = {
            2 * b: tokens(cls_g, patches_g).requires_grad_(),
            lc * b: tokens(cls_l, cls_l[:, None]).requires_grad_(),
        }
        global_crops = torch.zeros(2 * b, 1, device=device)
        local_crops = torch.zeros(lc * b, 1, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            seconds, out = timed(
                lambda: objective(
                    branch(student, s_tokens),
                    branch(teacher, t_tokens),
                    criteria,
                    global_crops,
                    local_crops,
                    masks,
                    0.07,
                ),
                device,
            )
        return seconds, out["loss"].detach().reshape(1)

    return {
        f"heads + targets + losses, forward ({args.heads_precision})": {
            "shape": f"{(4 + lc) * b} + 2 x {int(masks.sum())} rows",
            "official": run_official,
            "geodino": run_geodino,
            "compare": False,
        }
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
    parser.add_argument(
        "--heads-precision",
        default="32-true",
        choices=["32-true", "bf16-mixed"],
        help="precision of the heads + targets + losses part (bf16-mixed: bf16 autocast)",
    )
    parser.add_argument("--only", default="", help="run only the parts whose name has this")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official = import_official(args.official)
    single_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if not args.device.startswith("cuda"):
        keep_cuda_calls_on_the_cpu()
    rows = []
    for name, case in cases(args, official).items():
        if args.only and args.only not in name:
            continue
        times: dict[str, list[float]] = {"official": [], "geodino": []}
        outputs: dict[str, Tensor] = {}
        for i in range(args.repeats + 1):  # the first call of each side warms up
            for side in ("official", "geodino") if i % 2 else ("geodino", "official"):
                seconds, outputs[side] = case[side]()
                if i:
                    times[side].append(seconds)
        diff = float("nan")
        if case.get("compare", True):
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
