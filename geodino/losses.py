"""DINOv2's losses: DINO (centring, Sinkhorn-Knopp), iBOT patch loss and KoLeo.

Names and signatures follow the official code so that code ports over. Every reduction that
the official code makes across processes happens here too, but only when a process group is
initialised: one process and N processes on the same global batch give the same result.
Sinkhorn-Knopp runs in the log domain, so it stays finite on large logits.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.errors import ConfigError


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


def _logsumexp(x: Tensor, dim: int | None, across_processes: bool) -> Tensor:
    """log(sum(exp(x))) over ``dim`` (None: everything), optionally summed over processes."""
    dims = tuple(range(x.ndim)) if dim is None else (dim,)
    if x.numel():
        peak = x.amax(dim=dims, keepdim=True)
    else:  # a process without samples still joins the reductions
        shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
        peak = x.new_full(shape, -math.inf)
    if across_processes:
        _all_reduce(peak, dist.ReduceOp.MAX)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = (x - peak).exp().sum(dim=dims, keepdim=True)
    if across_processes:
        _all_reduce(total)
    return peak + total.log()


def _sinkhorn_knopp(logits: Tensor, temp: float, batch: Tensor | float, iterations: int) -> Tensor:
    """Sinkhorn-Knopp targets, as the official code computes them, in the log domain.

    Args:
        logits: (B, K) teacher logits of this process.
        temp: teacher temperature.
        batch: global number of samples (B summed over processes).
        iterations: normalisation rounds.

    Returns:
        (B, K) targets whose rows sum to 1.
    """
    log_q = (logits.float() / temp).t()  # K x B
    k = log_q.shape[0]
    log_b = torch.log(torch.as_tensor(batch, dtype=log_q.dtype, device=log_q.device))
    log_q = log_q - _logsumexp(log_q, None, True)
    for _ in range(iterations):
        # rows (prototypes) sum to 1/K over the global batch ...
        log_q = log_q - _logsumexp(log_q, 1, True) - math.log(k)
        # ... and columns (samples) to 1/B
        log_q = log_q - _logsumexp(log_q, 0, False) - log_b
    return (log_q + log_b).exp().t()


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
        return F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> Tensor:
        """Sinkhorn-Knopp centred targets, balanced over the global batch.

        Args:
            teacher_output: (B, K) logits of this process.
            teacher_temp: teacher temperature.
            n_iterations: normalisation rounds.

        Returns:
            (B, K) targets.
        """
        # count the global batch rather than assume equal shares (a last, smaller batch)
        batch = _all_reduce(
            torch.tensor(float(teacher_output.shape[0]), device=teacher_output.device)
        )
        return _sinkhorn_knopp(teacher_output, teacher_temp, batch, n_iterations)

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
        total = torch.zeros((), device=student_output_list[0].device)
        for student in student_output_list:
            log_probs = F.log_softmax(student.float() / self.student_temp, dim=-1)
            for teacher in teacher_out_softmaxed_centered_list:
                total = total - (teacher * log_probs).sum(dim=-1).mean()
        return total

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """EMA update of the centre with the global batch mean of the teacher logits.

        Args:
            teacher_output: (B, K) logits of this process.
        """
        total = _all_reduce(teacher_output.float().sum(dim=0, keepdim=True))
        count = _all_reduce(torch.tensor(float(teacher_output.shape[0]), device=total.device))
        mean = total / count
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
        center = self.center.reshape(-1)
        return F.softmax((teacher_patch_tokens.float() - center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Tensor,
        n_iterations: int = 3,
    ) -> Tensor:
        """Sinkhorn-Knopp targets over the masked patches of the global batch.

        Args:
            teacher_output: (M, K) logits of this process's masked patches.
            teacher_temp: teacher temperature.
            n_masked_patches_tensor: number of masked patches on this process.
            n_iterations: normalisation rounds.

        Returns:
            (M, K) targets.
        """
        total = _all_reduce(
            n_masked_patches_tensor.detach().clone().float().to(teacher_output.device)
        )
        return _sinkhorn_knopp(teacher_output, teacher_temp, total.reshape(()), n_iterations)

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
        log_probs = F.log_softmax(student_patch_tokens_masked.float() / self.student_temp, dim=-1)
        loss = (teacher_patch_tokens_masked * log_probs).sum(dim=-1)
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
        tokens = teacher_patch_tokens.float()
        if tokens.ndim == 3:
            tokens = tokens.mean(1)
        total = _all_reduce(tokens.sum(dim=0, keepdim=True))
        # processes may hold different numbers of masked patches: count them all
        count = _all_reduce(torch.tensor(float(tokens.shape[0]), device=total.device))
        mean = total / count.clamp_min(1)
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
