"""The DINOv2 objective gives the losses that DINOv2Task computed before it was separated.

``data/pre_restructuring_losses.pt`` holds one batch, the losses, the student's gradient norm
and the loss centres that ``DINOv2Task._losses`` gave before the objective moved into
``geodino/tasks/objective.py`` (Sinkhorn-Knopp; softmax centring with a separate iBOT head;
cross-attention fusion with modality dropout), with drop path on. Since issue 17 rewrote
the loss side (exp-domain Sinkhorn-Knopp, one-buffer cross-entropy) the values agree to
float32 rounding rather than bit for bit.
"""

from pathlib import Path
from typing import Any

import pytest
import torch

from geodino.tasks import DINOv2Task
from geodino.tasks.objective import Branch, Criteria, DINOv2Objective
from geodino.tasks.schedules import CosineSchedule

DATA = Path(__file__).parent / "data" / "pre_restructuring_losses.pt"
ROUNDING = {"rtol": 1e-5, "atol": 1e-6}
CASES: dict[str, dict[str, Any]] = {
    "sinkhorn": {},
    "softmax_separate": {
        "centering": "softmax",
        "ibot_separate_head": True,
        "ibot_head_out_dim": 8,
    },
    "fusion_dropout": {
        "modalities": {"s1": 1, "s2": 2},
        "fusion": "xattn",
        "modality_dropout": 0.4,
    },
}


def tiny_task(**extra: Any) -> DINOv2Task:
    torch.manual_seed(0)
    task = DINOv2Task(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=3,
        model_kwargs={
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "img_size": 28,
            "drop_path_rate": 0.1,
        },
        head_out_dim=8,
        head_hidden_dim=8,
        head_bottleneck_dim=4,
        head_nlayers=2,
        mask_probability=1.0,
        pack_crops=False,  # saved from two passes: drop path draws in the order of passes
        **extra,
    )
    task._schedule = {"teacher_temp": CosineSchedule(0.07, 0.07, 10, 3, start_warmup=0.04)}
    return task


@pytest.mark.parametrize("case", list(CASES))
def test_losses_and_gradients_are_unchanged(case: str) -> None:
    saved = torch.load(DATA, weights_only=True)[case]
    task = tiny_task(**CASES[case])
    torch.manual_seed(5)  # drop path draws from the global generator
    losses = task._losses(saved["batch"])
    losses["loss"].backward()
    grad = sum(p.grad.abs().sum() for p in task.student.parameters() if p.grad is not None)
    # the saved outputs predate the prototypes-used diagnostic of the collapse guard
    assert set(losses) - {"teacher_prototypes_used"} == set(saved["losses"])
    assert 1.0 <= float(losses["teacher_prototypes_used"]) <= task.hparams["head_out_dim"]
    for key, value in saved["losses"].items():
        torch.testing.assert_close(losses[key].detach(), value, **ROUNDING, msg=key)
    torch.testing.assert_close(grad, saved["grad"], **ROUNDING)
    torch.testing.assert_close(task.dino_loss.center, saved["centers"][0], **ROUNDING)
    torch.testing.assert_close(task.ibot_loss.center, saved["centers"][1], **ROUNDING)
    assert all(p.grad is None for p in task.teacher.parameters())


def test_weights_and_masks_select_the_terms() -> None:
    task = tiny_task()
    batch = torch.load(DATA, weights_only=True)["sinkhorn"]["batch"]
    student, teacher = task._branch("student"), task._branch("teacher")
    criteria = Criteria(task.dino_loss, task.ibot_loss, task.koleo_loss)
    args = (batch["global_crops"], batch["local_crops"])
    full = DINOv2Objective(koleo_loss_weight=0.5, ibot_loss_weight=2.0)
    masks = task._masks(6, (2, 2), torch.device("cpu"))
    torch.manual_seed(0)
    out = full(student, teacher, criteria, *args, masks, 0.04)
    total = out["dino_loss"] + 0.5 * out["koleo_loss"] + 2.0 * out["ibot_loss"]
    torch.testing.assert_close(out["loss"], total)
    # no masks: no iBOT term; KoLeo weight 0: no KoLeo term
    plain = DINOv2Objective(koleo_loss_weight=0.0)
    torch.manual_seed(0)
    out = plain(student, teacher, criteria, *args, None, 0.04)
    assert "ibot_loss" not in out and "koleo_loss" not in out
    torch.testing.assert_close(out["loss"], out["dino_loss"])
    # no local crops: the DINO loss averages the two crossed global terms only
    torch.manual_seed(0)
    globals_only = plain(student, teacher, criteria, args[0], args[0][:0], None, 0.04)
    assert torch.isfinite(globals_only["loss"])


def test_branch_shares_the_dino_head_without_a_separate_ibot_head() -> None:
    task = tiny_task()
    branch: Branch = task._branch("teacher")
    assert branch.ibot_head is branch.dino_head is task.teacher["dino_head"]
    separate = tiny_task(ibot_separate_head=True, ibot_head_out_dim=8)._branch("student")
    assert separate.ibot_head is not separate.dino_head
