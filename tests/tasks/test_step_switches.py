"""DINOv2Task's speed switches give the losses, gradients and updates of the plain step."""

import shutil
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from geodino.tasks import DINOv2Task
from geodino.tasks.schedules import CosineSchedule

TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": 28}


def tiny_task(**switches: Any) -> DINOv2Task:
    torch.manual_seed(0)
    task = DINOv2Task(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=3,
        model_kwargs=TINY,
        head_out_dim=8,
        head_hidden_dim=8,
        head_bottleneck_dim=4,
        head_nlayers=2,
        mask_probability=1.0,
        **switches,
    )
    task._schedule = {"teacher_temp": CosineSchedule(0.07, 0.07, 10, 3, start_warmup=0.04)}
    return task


def batch(local_crops: int = 3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "global_crops": torch.randn(2 * 4, 3, 28, 28, generator=g),
        "local_crops": torch.randn(local_crops * 4, 3, 14, 14, generator=g)
        if local_crops
        else torch.empty(0),
    }


def losses_and_gradients(task: DINOv2Task, local_crops: int = 3) -> dict[str, Tensor]:
    out = task._losses(batch(local_crops))
    out["loss"].backward()
    grads = {f"grad.{n}": p.grad for n, p in task.student.named_parameters() if p.grad is not None}
    grads["grad.mask_token"] = task.mask_token.grad
    return {k: v.detach() for k, v in {**out, **grads}.items() if v is not None}


def assert_same(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Equal within float rounding, relative to each tensor's scale (gradients span 1e-9..1e5)."""
    assert set(got) == set(expected)
    for key, value in expected.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5 * scale + 1e-7, msg=key)


@pytest.mark.parametrize("local_crops", [3, 0])
def test_packed_crops_equal_two_passes(local_crops: int) -> None:
    two_passes = tiny_task(pack_crops=False)
    packed = tiny_task()
    assert two_passes._branch("student").encode_packed is None
    assert packed._branch("student").encode_packed is not None
    assert packed._branch("teacher").encode_packed is None
    expected = losses_and_gradients(two_passes, local_crops)
    assert expected["grad.mask_token"].abs().sum() > 0
    assert_same(losses_and_gradients(packed, local_crops), expected)


def test_a_fusion_student_with_modality_dropout_runs_two_passes() -> None:
    task = tiny_task(modalities={"s1": 1, "s2": 2}, fusion="early", modality_dropout=0.3)
    assert task._branch("student").encode_packed is None
    assert torch.isfinite(task._losses(batch())["loss"])


def test_channels_last_equals_contiguous() -> None:
    task = tiny_task(channels_last=True)
    weight = task.student["backbone"].patch_embed.proj.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert_same(losses_and_gradients(task), losses_and_gradients(tiny_task()))


def updated(implementation: str) -> dict[str, Tensor]:
    task = tiny_task(adamw_implementation=implementation)
    optimizer = task.configure_optimizers()
    for _ in range(2):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * group["lr_multiplier"]
            group["weight_decay"] = 0.04 * group["wd_multiplier"]
        optimizer.zero_grad()
        task._losses(batch())["loss"].backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in task.student.named_parameters()}


def test_adamw_kernels_update_alike() -> None:
    expected = updated("for_loop")
    before = {n: p.detach() for n, p in tiny_task().student.named_parameters()}
    assert any(not torch.equal(expected[n], before[n]) for n in before)
    for implementation in ("foreach", "fused", "auto"):
        got = updated(implementation)
        assert set(got) == set(expected)
        for name, value in expected.items():
            if name.endswith("attn.qkv.bias"):
                # the key bias has a zero gradient (softmax ignores shifts): Adam normalises
                # its rounding noise, which each kernel rounds its own way
                got[name], value = got[name].chunk(3)[0::2], value.chunk(3)[0::2]
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_picks_the_fused_kernel_on_the_cpu() -> None:
    group = tiny_task().configure_optimizers().param_groups[0]
    assert group["fused"] is True


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler, and none is installed",
)
def test_compiled_backbone_equals_eager() -> None:
    compiled = tiny_task(compile_backbone=True)
    assert_same(losses_and_gradients(compiled), losses_and_gradients(tiny_task()))
    assert set(compiled._compiled) == {("student", True), ("teacher", False)}


class AutocastProbe(Callback):
    """Records the dtype of the student's first attention projection during training."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        qkv = pl_module.student["backbone"].blocks[0].attn.qkv

        def record(_module: nn.Module, _args: object, out: Tensor) -> None:
            self.dtypes.append(out.dtype)

        qkv.register_forward_hook(record)


class Crops(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        one = batch()
        return {k: v.reshape(-1, 4, *v.shape[1:])[:, index] for k, v in one.items()}


def test_bf16_autocast_covers_the_step(tmp_path: Any) -> None:
    probe = AutocastProbe()
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        precision="bf16-mixed",
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[probe],
    )
    loader = torch.utils.data.DataLoader(Crops(), batch_size=4, collate_fn=collate)
    trainer.fit(tiny_task(), train_dataloaders=loader)
    assert probe.dtypes and set(probe.dtypes) == {torch.bfloat16}


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-sample crops [view, ...] stacked view-major, as the data modules deliver them."""
    return {k: torch.stack([s[k] for s in samples], 1).flatten(0, 1) for k in samples[0]}
