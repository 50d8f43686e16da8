"""Losses against the official DINOv2 outputs, across processes, and on bad input."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geodino.errors import ConfigError
from geodino.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, soft_cross_entropy

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def ref(dinov2_reference: dict) -> dict:
    return dinov2_reference


def test_dino_centre_softmax_and_sinkhorn(ref: dict) -> None:
    d = ref["dino"]
    loss = DINOLoss(256, student_temp=d["student_temp"], center_momentum=d["center_momentum"])
    targets = loss.sinkhorn_knopp_teacher(d["teacher_logits"], d["teacher_temp"], n_iterations=3)
    torch.testing.assert_close(targets, d["sinkhorn_knopp_3iter"], **TOL)
    loss.update_center(d["teacher_logits"])
    torch.testing.assert_close(loss.center, d["center_after_one_update"], **TOL)
    torch.testing.assert_close(
        loss.softmax_center_teacher(d["teacher_logits"], d["teacher_temp"]),
        d["centered_softmax"],
        **TOL,
    )


def test_dino_global_and_local_losses(ref: dict) -> None:
    d = ref["dino"]
    loss = DINOLoss(256)
    teacher = list(d["sinkhorn_knopp_3iter"].chunk(2))
    students = list(d["student_global"].chunk(2))
    torch.testing.assert_close(
        loss(students, teacher), torch.tensor(d["global_loss_all_pairs"]), **TOL
    )
    # as the official SSLMetaArch calls it: student view 0 against teacher view 1 and back
    crossed = loss([d["student_global"]], [torch.cat(teacher[::-1])])
    torch.testing.assert_close(crossed, torch.tensor(d["global_loss_crossed_views"]), **TOL)
    local = loss(list(d["student_local"].chunk(4)), teacher)
    torch.testing.assert_close(local, torch.tensor(d["local_loss"]), **TOL)


def test_ibot_sinkhorn_softmax_and_masked_loss(ref: dict) -> None:
    i = ref["ibot"]
    loss = iBOTPatchLoss(128)
    n = i["masks"].sum().reshape(1)
    targets = loss.sinkhorn_knopp_teacher(i["teacher_patch_logits"], i["teacher_temp"], n)
    torch.testing.assert_close(targets, i["sinkhorn_knopp_3iter"], **TOL)
    torch.testing.assert_close(
        loss.softmax_center_teacher(i["teacher_patch_logits"], 0.07),
        i["centered_softmax_zero_center"],
        **TOL,
    )
    value = loss.forward_masked(i["student_patch_logits"], i["sinkhorn_knopp_3iter"], i["masks"])
    torch.testing.assert_close(value, torch.tensor(i["loss_masked"]), **TOL)


def test_koleo(ref: dict) -> None:
    torch.testing.assert_close(
        KoLeoLoss()(ref["koleo"]["features"]), torch.tensor(ref["koleo"]["loss"]), **TOL
    )
    with pytest.raises(ConfigError, match="KoLeo needs >= 2 samples"):
        KoLeoLoss()(torch.randn(1, 8))


def test_koleo_runs_in_float32_under_autocast(ref: dict) -> None:
    features = ref["koleo"]["features"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = KoLeoLoss()(features.to(torch.bfloat16).float() @ torch.eye(64))
    assert value.dtype == torch.float32
    expected = KoLeoLoss()(features.to(torch.bfloat16).float())
    torch.testing.assert_close(value, expected, **TOL)


def test_sinkhorn_stays_finite_on_large_logits() -> None:
    logits = torch.randn(32, 64) * 50
    for targets in (
        DINOLoss(64).sinkhorn_knopp_teacher(logits, 0.04),
        iBOTPatchLoss(64).sinkhorn_knopp_teacher(logits, 0.04, torch.tensor([32.0])),
    ):
        assert torch.isfinite(targets).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(32), rtol=1e-4, atol=1e-4)


def _cosines(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(rows, 32, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(cols, 32, generator=g), dim=-1)
    return a @ b.T


def _official_sinkhorn(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """The official exp-domain iterations, written out (one process)."""
    q = torch.exp(logits.double() / temp).t()
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * q.shape[0]
        q /= q.sum(dim=0, keepdim=True) * q.shape[1]
    return (q * q.shape[1]).t().float()


@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_sinkhorn_equals_the_official_iterations_at_the_sharpest_temperature(
    iterations: int,
) -> None:
    logits = _cosines(96, 2048, 0)  # |logits| / 0.04 up to 25, as from the heads
    expected = _official_sinkhorn(logits, 0.04, iterations)
    targets = iBOTPatchLoss(2048).sinkhorn_knopp_teacher(logits, 0.04, n_iterations=iterations)
    torch.testing.assert_close(targets, expected, **TOL)
    assert targets.data_ptr() != logits.data_ptr()


def test_sinkhorn_in_place_writes_the_targets_into_the_logits() -> None:
    logits = _cosines(16, 512, 1)
    expected = DINOLoss(512).sinkhorn_knopp_teacher(logits, 0.07)
    owned = logits.clone()
    targets = DINOLoss(512).sinkhorn_knopp_teacher(owned, 0.07, inplace=True)
    assert targets.data_ptr() == owned.data_ptr()
    torch.testing.assert_close(targets, expected, rtol=0, atol=0)
    # bf16 logits (autocast heads) cannot hold the targets: a float32 tensor is returned
    half = logits.to(torch.bfloat16)
    targets = DINOLoss(512).sinkhorn_knopp_teacher(half, 0.07, inplace=True)
    assert targets.dtype == torch.float32 and half.dtype == torch.bfloat16
    torch.testing.assert_close(targets, _official_sinkhorn(half.float(), 0.07), **TOL)
    with pytest.raises(ConfigError, match=">= 1 iteration"):
        DINOLoss(512).sinkhorn_knopp_teacher(logits, 0.07, n_iterations=0)


@pytest.mark.parametrize("mass", [1.0, 2.0])
def test_soft_cross_entropy_equals_log_softmax_terms_and_their_gradient(mass: float) -> None:
    student = (_cosines(24, 300, 2) * 3).requires_grad_()
    targets = torch.softmax(_cosines(24, 300, 3) / 0.04, dim=-1) * mass  # two views summed
    reference = student.detach().clone().requires_grad_()
    weights = torch.linspace(0.5, 2.0, 24)
    value = soft_cross_entropy(student, targets, 0.1)
    expected = (targets * torch.log_softmax(reference / 0.1, dim=-1)).sum(-1)
    torch.testing.assert_close(value, expected, **TOL)
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    assert student.grad is not None and reference.grad is not None
    torch.testing.assert_close(student.grad, reference.grad, **TOL)


def test_soft_cross_entropy_in_bfloat16_autocast_and_with_learned_targets() -> None:
    student = _cosines(8, 64, 4).requires_grad_()
    targets = torch.softmax(_cosines(8, 64, 5) / 0.07, dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = soft_cross_entropy(student, targets, 0.1)
    assert value.dtype == torch.float32
    expected = (targets * torch.log_softmax(student.detach() / 0.1, dim=-1)).sum(-1)
    torch.testing.assert_close(value.detach(), expected, **TOL)
    # targets that need a gradient take the plain autograd path
    learned = targets.clone().requires_grad_()
    soft_cross_entropy(student, learned, 0.1).sum().backward()
    assert learned.grad is not None and student.grad is not None


def test_ibot_explicit_weights_and_padding(ref: dict) -> None:
    i = ref["ibot"]
    loss = iBOTPatchLoss(128)
    masks = i["masks"]
    n = int(masks.sum())
    weights = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    padded_s = torch.cat([i["student_patch_logits"], torch.zeros(5, 128)])
    padded_t = torch.cat([i["sinkhorn_knopp_3iter"], torch.full((5, 128), 1 / 128)])
    value = loss.forward_masked(padded_s, padded_t, masks, n_masked_patches=n, masks_weight=weights)
    torch.testing.assert_close(value, torch.tensor(i["loss_masked"]), **TOL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world: int,
    port: int,
    logits: torch.Tensor,
    patches: torch.Tensor,
    rows: list[int],
    counts: list[int],
    out: dict,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = logits[sum(rows[:rank]) : sum(rows[: rank + 1])]
        dino = DINOLoss(logits.shape[1])
        targets = dino.sinkhorn_knopp_teacher(mine, 0.07)
        dino.update_center(mine)
        results = [targets, dino.center.clone()]
        for split in (counts, [patches.shape[0], 0]):  # a process may have no masked patch
            mine_p = patches[sum(split[:rank]) : sum(split[: rank + 1])]
            ibot = iBOTPatchLoss(patches.shape[1])
            results.append(
                ibot.sinkhorn_knopp_teacher(mine_p, 0.07, torch.tensor([float(split[rank])]))
            )
            ibot.update_center(mine_p)
            results.append(ibot.center.clone())
        out[rank] = results
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_on_the_concatenated_batch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(12, 32, generator=g) * 2 - 1
    patches = torch.rand(15, 16, generator=g) * 2 - 1
    rows, counts = [7, 5], [9, 6]  # unequal batches and masked-patch counts per process
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(
        _worker, args=(2, _free_port(), logits, patches, rows, counts, out), nprocs=2, join=True
    )
    single = DINOLoss(32)
    expected = single.sinkhorn_knopp_teacher(logits, 0.07)
    single.update_center(logits)
    ibot = iBOTPatchLoss(16)
    expected_p = ibot.sinkhorn_knopp_teacher(patches, 0.07, torch.tensor([15.0]))
    ibot.update_center(patches)
    assert not torch.allclose(single.center, torch.zeros(1, 32))
    torch.testing.assert_close(torch.cat([out[0][0], out[1][0]]), expected, **TOL)
    for first in (2, 4):
        torch.testing.assert_close(torch.cat([out[0][first], out[1][first]]), expected_p, **TOL)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank][1], single.center, **TOL)
        torch.testing.assert_close(out[rank][3], ibot.center, **TOL)
        torch.testing.assert_close(out[rank][5], ibot.center, **TOL)
