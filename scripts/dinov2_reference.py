"""Write tests/data/dinov2_reference.pt: outputs of the official DINOv2 code to test against.

The equivalence tests (tests/test_losses.py, tests/models/test_backbones.py) prove geodino's
losses and its loading of official checkpoints equal to facebookresearch/dinov2 at commit
b8931f7 on these outputs, to 1e-5. This script regenerates them from a checkout of that
commit; the official code is imported from the checkout, never copied into this repository:

    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2
    git -C /tmp/dinov2 checkout b8931f7
    python scripts/dinov2_reference.py /tmp/dinov2           # writes tests/data/dinov2_reference.pt

Everything runs on the CPU in float32 and needs only torch and numpy (no xFormers: the
official layers and iBOT loss fall back to their plain PyTorch paths by themselves). Nothing in
the official code is patched. Its iBOT Sinkhorn-Knopp calls ``dist.all_reduce``
unconditionally, so the script initialises a single-process gloo group (file store, no
network) around the computation.

The file is small (1.7 MB) and loads with ``torch.load(path, weights_only=True)``:

- ``meta``: the official commit, torch version and seed.
- ``dino``: official ``DINOLoss(256, student_temp=0.1, center_momentum=0.9)``.
  ``teacher_logits`` (16, 256) = 2 global views x batch 8, view-major; ``student_global``
  (16, 256); ``student_local`` (32, 256) = 4 local views; all logits in [-1, 1] (cosines, as
  the head's weight-normalised last layer gives); ``teacher_temp`` 0.07.
  ``center_after_one_update`` (the centre after one update from zeros), ``centered_softmax``
  (softmax centring with that centre), ``sinkhorn_knopp_3iter`` (targets of the 16 teacher
  rows, 3 iterations, one process). ``global_loss_crossed_views``: the loss exactly as the
  official ``SSLMetaArch`` computes it on global crops, ``forward([student_global],
  [targets of teacher view 1 then view 0])``. ``global_loss_all_pairs``: ``forward`` over the
  2 student views x 2 teacher views. ``local_loss``: ``forward`` over the 4 local views x 2
  teacher views.
- ``ibot``: official ``iBOTPatchLoss(128)``. ``masks`` (16, 16) bool (16 images x 16 patches,
  image 0 with no masked patch); ``teacher_patch_logits`` and ``student_patch_logits``
  (n_masked, 128), the masked tokens in row-major order of ``masks``; ``teacher_temp`` 0.07;
  ``sinkhorn_knopp_3iter``; ``centered_softmax_zero_center`` (softmax centring before any
  centre update, called on the (1, n, 128) batch as ``SSLMetaArch`` does); ``loss_masked``
  (``forward_masked`` of the student logits against the Sinkhorn-Knopp targets).
- ``koleo``: official ``KoLeoLoss`` ``loss`` on ``features`` (8, 64), rows 2 and 3 nearly
  equal.
- ``backbone``: an official ``DinoVisionTransformer`` built as ``vit_small`` builds it (MLP
  blocks, ``MemEffAttention``), but small: patch 14, 13 bands, width 64, 2 blocks, 4 heads,
  4 registers, position embedding for 126 px (9 x 9 patches), ``interpolate_antialias=True``,
  ``interpolate_offset=0.0`` (the register models' setting), blocks in one chunk as the
  training code saves them (keys ``blocks.0.<i>.*``). Every parameter is drawn at a
  non-trivial scale (tokens, position embedding, layer-scale gammas, norms), so that a wrong
  mapping cannot pass. ``config``; ``state_dict``; ``input`` (2, 13, 56, 56), whose 4 x 4
  patch grid makes the model resample its 9 x 9 position grid; its ``x_norm_clstoken``,
  ``x_norm_regtokens`` and ``x_norm_patchtokens``; and ``masked``: ``masks`` (2, 16) bool and
  the same three outputs with those patches replaced by the mask token.
"""

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

COMMIT = "b8931f7"
SEED = 20260
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "dinov2_reference.pt"
BACKBONE = {
    "arch": "official DinoVisionTransformer",
    "img_size": 126,
    "patch_size": 14,
    "in_chans": 13,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 4,
    "num_register_tokens": 4,
    "block_chunks": 1,
    "interpolate_antialias": True,
    "interpolate_offset": 0.0,
}

log = logging.getLogger("dinov2_reference")


def _check_commit(checkout: Path) -> str:
    """The checkout's commit; exits if it is a git checkout of another commit."""
    if not (checkout / "dinov2" / "models" / "vision_transformer.py").is_file():
        sys.exit(f"{checkout} is not a checkout of facebookresearch/dinov2 (no dinov2/models)")
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        log.warning("%s is not a git checkout: assuming it holds commit %s", checkout, COMMIT)
        return COMMIT
    if not head.startswith(COMMIT):
        sys.exit(f"{checkout} is at {head}; run `git -C {checkout} checkout {COMMIT}` first")
    return head


def _cosines(rows: int, cols: int, g: torch.Generator) -> Tensor:
    """Cosines between random unit vectors, spread over most of [-1, 1] (a head's logits)."""
    a = F.normalize(torch.randn(rows, 8, generator=g), dim=-1)
    b = F.normalize(torch.randn(cols, 8, generator=g), dim=-1)
    return (a @ b.T).clamp(-1, 1)


def dino_reference(official: dict, g: torch.Generator) -> dict:
    """The official DINO loss: centring, Sinkhorn-Knopp, global and local terms."""
    teacher_temp, student_temp, momentum = 0.07, 0.1, 0.9
    teacher = _cosines(16, 256, g)
    student_global = _cosines(16, 256, g)
    student_local = _cosines(32, 256, g)
    loss = official["DINOLoss"](256, student_temp=student_temp, center_momentum=momentum)
    targets = loss.sinkhorn_knopp_teacher(teacher, teacher_temp, n_iterations=3)
    crossed = torch.cat(targets.chunk(2)[::-1])
    loss.update_center(teacher)
    centered = loss.softmax_center_teacher(teacher, teacher_temp)
    return {
        "teacher_logits": teacher,
        "student_global": student_global,
        "student_local": student_local,
        "teacher_temp": teacher_temp,
        "student_temp": student_temp,
        "center_momentum": momentum,
        "center_after_one_update": loss.center.clone(),
        "centered_softmax": centered,
        "sinkhorn_knopp_3iter": targets,
        "global_loss_crossed_views": float(loss([student_global], [crossed])),
        "global_loss_all_pairs": float(loss(list(student_global.chunk(2)), list(targets.chunk(2)))),
        "local_loss": float(loss(list(student_local.chunk(4)), list(targets.chunk(2)))),
    }


def ibot_reference(official: dict, g: torch.Generator) -> dict:
    """The official iBOT patch loss on masked tokens of 16 images of 16 patches."""
    teacher_temp, student_temp = 0.07, 0.1
    masks = torch.rand(16, 16, generator=g) < 0.3
    masks[0] = False  # an image without masked patch weighs nothing
    masks[1, :3] = True  # and every other image has at least one
    n = int(masks.sum())
    teacher = _cosines(n, 128, g)
    student = _cosines(n, 128, g)
    loss = official["iBOTPatchLoss"](128, student_temp=student_temp)
    targets = loss.sinkhorn_knopp_teacher(
        teacher, teacher_temp, torch.tensor([float(n)]), n_iterations=3
    )
    return {
        "masks": masks,
        "teacher_patch_logits": teacher,
        "student_patch_logits": student,
        "teacher_temp": teacher_temp,
        "student_temp": student_temp,
        "sinkhorn_knopp_3iter": targets,
        # as SSLMetaArch calls it: the masked tokens as one (1, n, K) batch, then squeezed
        "centered_softmax_zero_center": loss.softmax_center_teacher(
            teacher.unsqueeze(0), teacher_temp
        ).squeeze(0),
        "loss_masked": float(loss.forward_masked(student, targets, masks)),
    }


def koleo_reference(official: dict, g: torch.Generator) -> dict:
    """The official KoLeo loss on 8 features, two of them nearly equal."""
    features = torch.randn(8, 64, generator=g)
    features[3] = features[2] + 1e-3 * torch.randn(64, generator=g)
    return {"features": features, "loss": float(official["KoLeoLoss"]()(features))}


def _draw_parameters(model: torch.nn.Module, g: torch.Generator) -> None:
    """Give every parameter a non-trivial value, independent of the official init order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(".gamma"):  # layer scale
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim >= 2 and name.endswith("weight"):  # linear and patch projection
                p.copy_(noise / p[0].numel() ** 0.5)
            else:  # cls, register and mask tokens, position embedding
                p.copy_(0.5 * noise)


def backbone_reference(official: dict, g: torch.Generator) -> dict:
    """The official ViT's normalised tokens, plain and with masked patches."""
    from functools import partial

    config = dict(BACKBONE)
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    model = official["DinoVisionTransformer"](
        block_fn=partial(official["Block"], attn_class=official["MemEffAttention"]),
        init_values=1e-5,
        **kwargs,
    )
    _draw_parameters(model, g)
    model.eval()
    images = torch.randn(2, 13, 56, 56, generator=g)
    masks = torch.rand(2, 16, generator=g) < 0.4
    masks[0, 5] = True
    names = ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens")
    with torch.no_grad():
        plain = model.forward_features(images)
        masked = model.forward_features(images, masks)
    return {
        "config": config,
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "input": images,
        **{k: plain[k] for k in names},
        "masked": {"masks": masks, **{k: masked[k] for k in names}},
    }


def _official(checkout: Path) -> dict:
    """The official classes, imported from the checkout."""
    sys.path.insert(0, str(checkout))
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss
    from dinov2.models.vision_transformer import DinoVisionTransformer

    return {
        "DINOLoss": DINOLoss,
        "iBOTPatchLoss": iBOTPatchLoss,
        "KoLeoLoss": KoLeoLoss,
        "DinoVisionTransformer": DinoVisionTransformer,
        "Block": NestedTensorBlock,
        "MemEffAttention": MemEffAttention,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help=f"facebookresearch/dinov2 at {COMMIT}")
    parser.add_argument("--out", type=Path, default=OUT, help="file to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    commit = _check_commit(args.checkout.resolve())
    official = _official(args.checkout.resolve())
    torch.set_default_dtype(torch.float32)
    g = torch.Generator().manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        # the official iBOT Sinkhorn-Knopp all-reduces without asking whether a group exists
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            reference = {
                "meta": {"dinov2_commit": commit, "torch": str(torch.__version__), "seed": SEED},
                "dino": dino_reference(official, g),
                "ibot": ibot_reference(official, g),
                "koleo": koleo_reference(official, g),
            }
        finally:
            dist.destroy_process_group()
    reference["backbone"] = backbone_reference(official, g)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, args.out)
    torch.load(args.out, weights_only=True)  # the tests load it so: plain tensors and builtins
    log.info("wrote %s (%.0f kB)", args.out, args.out.stat().st_size / 1e3)


if __name__ == "__main__":
    main()
