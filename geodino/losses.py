"""DINOv2's losses: DINO (centring, Sinkhorn-Knopp), iBOT patch loss and KoLeo.

Names and signatures follow the official code so that code ports over. Every reduction that
the official code makes across processes happens here too, but only when a process group is
initialised: one process and N processes on the same global batch give the same result.

The teacher's targets and the student's cross-entropy are written for the step's largest
tensors (masked patches x 65,536 prototypes, 160 MB in float32 at batch 8): on the CPU a fresh
tensor of that size costs more in page faults than an arithmetic pass over it, so these paths
allocate one such tensor each and work in place. Sinkhorn-Knopp runs in the exp domain with
each sample's logits shifted by their maximum, as scalings of one matrix of exponentials
(matrix-vector products, no pass that rewrites it until the end), and without a value read
back to the host.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from geodino.errors import ConfigError

#: Elements per block of the row-wise dot product (4 MiB of float32: reused, not page-faulted).
_DOT_BLOCK = 1 << 20

#: Smallest prototype mass that Sinkhorn-Knopp divides by: keeps the scalings finite where
#: logits lie so far apart (over ~70 x the temperature) that exponentials underflow.
_MIN_MASS = 1e-30


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` of two (N, K) tensors through a small reused block, not an (N, K) one."""
    out = a.new_empty(a.shape[0])
    rows = max(1, _DOT_BLOCK // max(a.shape[1], 1))
    block = a.new_empty(min(rows, a.shape[0]), a.shape[1])
    for start in range(0, a.shape[0], rows):
        stop = min(start + rows, a.shape[0])
        product = torch.mul(a[start:stop], b[start:stop], out=block[: stop - start])
        torch.sum(product, dim=-1, out=out[start:stop])
    return out


def _global_mean(total: Tensor, count: int) -> Tensor:
    """``total / count`` summed over processes (one reduction, no host-to-device copy)."""
    if not _distributed():
        return total / max(count, 1)
    packed = torch.cat([total.reshape(-1), total.new_full((1,), float(count))])
    _all_reduce(packed)
    return (packed[:-1] / packed[-1].clamp_min(1)).reshape(total.shape)


def _softmax_(x: Tensor, temp: float) -> Tensor:
    """``softmax(x / temp)`` over the last dimension, written into ``x``."""
    peak = x.amax(dim=-1, keepdim=True)
    torch.add(peak.mul_(-1 / temp), x, alpha=1 / temp, out=x).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def _sinkhorn_knopp(logits: Tensor, temp: float, iterations: int, inplace: bool) -> Tensor:
    """Sinkhorn-Knopp targets as the official code computes them, balanced across processes.

    With ``E = exp((logits - m) / temp)`` (``m`` each sample's largest logit) the iterates are
    ``diag(v) E diag(u)``: the prototypes' masses ``E^T v`` (summed over processes) set ``u``,
    the samples' masses ``E u`` set ``v``, one matrix-vector product each; only the result is
    written. The first ``v`` restores the shift against the global maximum, so the iterates are
    the official ones (whose total, K and B normalisations are uniform scalings that cancel).

    Args:
        logits: (B, K) teacher logits of this process.
        temp: teacher temperature.
        iterations: normalisation rounds.
        inplace: write the targets into ``logits`` (when float32) instead of a new tensor.

    Returns:
        (B, K) targets whose rows sum to 1.

    Raises:
        ConfigError: with fewer than one iteration.
    """
    if iterations < 1:
        raise ConfigError(f"Sinkhorn-Knopp needs >= 1 iteration, got {iterations}.")
    scaled = logits if inplace and logits.dtype == torch.float32 else None
    if scaled is None:
        scaled = torch.empty_like(logits, dtype=torch.float32)
    peak = logits.amax(dim=1, keepdim=True).float()  # (B, 1)
    top = peak.max() if peak.numel() else peak.new_full((), -math.inf)
    top = _all_reduce(top.reshape(1), dist.ReduceOp.MAX)
    exps = torch.add(peak * (-1 / temp), logits, alpha=1 / temp, out=scaled).exp_()
    v = peak.squeeze(1).sub_(top).div_(temp).exp_()  # exp((m - max) / temp)
    u = v.new_empty(0)
    for i in range(iterations):
        mass = _all_reduce(torch.mv(exps.t(), v))  # per prototype, global
        u = mass.clamp_min_(_MIN_MASS).reciprocal_()
        if i < iterations - 1:
            v = torch.mv(exps, u).reciprocal_()  # per sample, local
    exps.mul_(u)
    return exps.div_(exps.sum(dim=1, keepdim=True))


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-row ``sum_k t_k log softmax(s / temp)_k`` with one (N, K) buffer for both passes.

    The forward pass keeps ``softmax(s / temp)`` and the backward pass turns it into the
    gradient in place (``(t - sum(t) p) / temp``), as xFormers' ``cross_entropy(...,
    bw_inplace=True)`` does for the official code on GPUs. A second backward pass through the
    same graph therefore fails loudly (the saved buffer has changed).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, student: Tensor, targets: Tensor, temp: float) -> Tensor:
        """Per-row cross-entropy terms; see the class docstring."""
        with torch.autocast(student.device.type, enabled=False):
            probs = torch.empty_like(student, dtype=torch.float32)
            peak = student.amax(dim=-1, keepdim=True).float()
            shifted = torch.add(peak * (-1 / temp), student, alpha=1 / temp, out=probs)
            dot = _row_dot(targets, shifted)
            norm = shifted.exp_().sum(dim=-1)
            mass = targets.sum(dim=-1, dtype=torch.float32)
            probs.div_(norm.unsqueeze(-1))
            ctx.save_for_backward(probs, targets, mass, torch.tensor(1 / temp))
            return dot - norm.log_() * mass

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        """Gradient with respect to the student logits, in the forward buffer."""
        # torch declares saved_tensors on the C base class, not on FunctionCtx
        probs, targets, mass, inv_temp = ctx.saved_tensors  # type: ignore[attr-defined]
        torch.addcmul(targets, probs, mass.neg().unsqueeze(-1), out=probs)
        return probs.mul_((grad * inv_temp).unsqueeze(-1)), None, None


def soft_cross_entropy(student: Tensor, targets: Tensor, temp: float) -> Tensor:
    """``sum(targets * log_softmax(student / temp), -1)`` per row, as the official losses use it.

    Args:
        student: (N, K) student logits.
        targets: (N, K) teacher targets (a row may sum to any mass, e.g. two views' targets).
        temp: student temperature.

    Returns:
        (N,) float32 terms (negative: the losses subtract them).
    """
    if targets.requires_grad or student.dtype != torch.float32:
        return (targets * F.log_softmax(student.float() / temp, dim=-1)).sum(dim=-1)
    result: Tensor = _SoftCrossEntropy.apply(student, targets, temp)
    return result


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions over pairs of views.

    Args:
        out_dim: number of prototypes.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the centre used by softmax centring.
    """

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        """Start with a zero centre."""
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        """Softmax of centred teacher logits.

        Args:
            teacher_output: (B, K) logits.
            teacher_temp: teacher temperature.

        Returns:
            (B, K) targets.
        """
        return _softmax_(torch.sub(teacher_output, self.center), teacher_temp)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: Tensor,
        teacher_temp: float,
        n_iterations: int = 3,
        *,
        inplace: bool = False,
    ) -> Tensor:
        """Sinkhorn-Knopp centred targets, balanced over the global batch.

        Args:
            teacher_output: (B, K) logits of this process.
            teacher_temp: teacher temperature.
            n_iterations: normalisation rounds.
            inplace: write the targets into ``teacher_output`` (float32 logits the caller
                no longer needs), saving a (B, K) tensor.

        Returns:
            (B, K) targets.
        """
        return _sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, inplace)

    def forward(
        self, student_output_list: list[Tensor], teacher_out_softmaxed_centered_list: list[Tensor]
    ) -> Tensor:
        """Sum over every (student, teacher) pair of the batch mean of -sum(t log s).

        The caller leaves out pairs it does not want (a global view with itself).

        Args:
            student_output_list: student logits per view, each (B, K).
            teacher_out_softmaxed_centered_list: teacher targets per view, each (B, K).

        Returns:
            the summed loss.

        Raises:
            ConfigError: if either list is empty.
        """
        if not student_output_list or not teacher_out_softmaxed_centered_list:
            raise ConfigError(
                "DINOLoss needs at least one student view and one teacher view; check the "
                "number of global/local crops."
            )
        # sum_t mean(t . log s) = mean((sum_t t) . log s): one product per student view
        teachers = iter(teacher_out_softmaxed_centered_list)
        targets = next(teachers)
        for teacher in teachers:
            targets = targets + teacher
        total = torch.zeros((), device=student_output_list[0].device)
        for student in student_output_list:
            total = total - soft_cross_entropy(student, targets, self.student_temp).mean()
        return total

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """EMA update of the centre with the global batch mean of the teacher logits.

        Args:
            teacher_output: (B, K) logits of this process.
        """
        mean = _global_mean(
            teacher_output.sum(dim=0, keepdim=True, dtype=torch.float32), len(teacher_output)
        )
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)


class iBOTPatchLoss(nn.Module):
    """Masked-patch cross-entropy between teacher targets and student predictions.

    Args:
        patch_out_dim: number of prototypes.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the centre used by softmax centring.
    """

    center: Tensor

    def __init__(
        self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        """Start with a zero centre."""
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: Tensor, teacher_temp: float) -> Tensor:
        """Softmax of centred teacher patch logits.

        Args:
            teacher_patch_tokens: (..., K) logits.
            teacher_temp: teacher temperature.

        Returns:
            targets of the same shape.
        """
        return _softmax_(torch.sub(teacher_patch_tokens, self.center.reshape(-1)), teacher_temp)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Tensor | None = None,
        n_iterations: int = 3,
        *,
        inplace: bool = False,
    ) -> Tensor:
        """Sinkhorn-Knopp targets over the masked patches of the global batch.

        Args:
            teacher_output: (M, K) logits of this process's masked patches.
            teacher_temp: teacher temperature.
            n_masked_patches_tensor: number of masked patches on this process; the official
                code scales by it and back, the targets do not depend on it (unused).
            n_iterations: normalisation rounds.
            inplace: write the targets into ``teacher_output`` (float32 logits the caller
                no longer needs), saving an (M, K) tensor.

        Returns:
            (M, K) targets.
        """
        return _sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, inplace)

    def forward_masked(
        self,
        student_patch_tokens_masked: Tensor,
        teacher_patch_tokens_masked: Tensor,
        student_masks_flat: Tensor,
        n_masked_patches: int | None = None,
        masks_weight: Tensor | None = None,
    ) -> Tensor:
        """Loss on masked patches, each image weighted equally.

        Args:
            student_patch_tokens_masked: (M, K) student logits of masked patches.
            teacher_patch_tokens_masked: (M, K) teacher targets of the same patches.
            student_masks_flat: (N_images, N_patches) bool masks.
            n_masked_patches: use only the first so many rows (official padding support).
            masks_weight: (M,) weight per masked patch (default: 1 / masked patches of its image).

        Returns:
            the loss: -sum(w * sum(t log s)) / N_images.
        """
        loss = soft_cross_entropy(
            student_patch_tokens_masked, teacher_patch_tokens_masked, self.student_temp
        )
        if masks_weight is None:
            per_image = 1 / student_masks_flat.sum(-1).clamp(min=1.0)
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        loss = loss * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: Tensor) -> None:
        """EMA update of the centre with the global mean of the teacher patch logits.

        Args:
            teacher_patch_tokens: (M, K) masked-patch logits or (B, N, K) patch logits.
        """
        tokens = teacher_patch_tokens
        if tokens.ndim == 3:
            tokens = tokens.mean(1, dtype=torch.float32)
        # processes may hold different numbers of masked patches: count them all
        mean = _global_mean(tokens.sum(dim=0, keepdim=True, dtype=torch.float32), len(tokens))
        self.center.mul_(self.center_momentum).add_(
            mean.reshape(self.center.shape), alpha=1 - self.center_momentum
        )


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser: spreads features over the sphere."""

    def forward(self, student_output: Tensor, eps: float = 1e-8) -> Tensor:
        """-mean log distance of each L2-normalised feature to its nearest neighbour.

        Args:
            student_output: (B, D) features.
            eps: numerical guard.

        Returns:
            the loss.

        Raises:
            ConfigError: with fewer than two samples.
        """
        if student_output.shape[0] < 2:
            raise ConfigError(
                f"KoLeo needs >= 2 samples per process, got {student_output.shape[0]}; raise "
                "the batch size or set koleo_loss_weight: 0."
            )
        with torch.autocast(student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)
            dots = x @ x.t()
            dots.fill_diagonal_(-1)
            nearest = dots.argmax(dim=1)
            distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
            return -torch.log(distances + eps).mean()
