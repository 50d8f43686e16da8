"""The DINOv2 objective: DINO, iBOT and KoLeo losses over student and teacher outputs.

As the official ``SSLMetaArch`` separates it from the training loop: given how each branch
encodes crops and its heads, one call computes the teacher's targets (no gradients) and the
student's losses. :class:`~geodino.tasks.DINOv2Task` owns the models, schedules, masks and
the Lightning plumbing around it.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss

#: Centring of the teacher's outputs.
Centering = Literal["sinkhorn_knopp", "softmax"]


class Branch(NamedTuple):
    """The student or the teacher, as the objective uses it.

    Args:
        encode: tokens of crops, ``(crops, masks or None) -> (B, 1 + R + N, D)``.
        split: splits tokens into class token, registers and patches.
        dino_head: head of the class tokens.
        ibot_head: head of the masked patch tokens (the DINO head when shared).
        encode_packed: tokens of several groups of crops in one packed pass,
            ``([crops...], [masks or None...]) -> [tokens...]``; None encodes the student's
            global and local crops in two passes.
    """

    encode: Callable[[Tensor, Tensor | None], Tensor]
    split: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    dino_head: nn.Module
    ibot_head: nn.Module
    encode_packed: Callable[[Sequence[Tensor], Sequence[Tensor | None]], list[Tensor]] | None = None


class Criteria(NamedTuple):
    """The loss modules (the DINO and iBOT ones hold the softmax centres).

    Args:
        dino: class-token loss.
        ibot: masked patch loss.
        koleo: KoLeo regulariser of the student's class tokens.
    """

    dino: DINOLoss
    ibot: iBOTPatchLoss
    koleo: KoLeoLoss


@dataclass(frozen=True)
class DINOv2Objective:
    """Weighted DINO, iBOT and KoLeo losses of one multi-crop batch.

    Args:
        dino_loss_weight: weight of the DINO loss.
        ibot_loss_weight: weight of the iBOT loss (masks are None when it is 0).
        koleo_loss_weight: weight of the KoLeo regulariser (0 skips it).
        centering: ``sinkhorn_knopp`` or ``softmax`` centring of the teacher's outputs.
        n_global: global crops per sample.
    """

    dino_loss_weight: float = 1.0
    ibot_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    centering: Centering = "sinkhorn_knopp"
    n_global: int = 2

    def dino_targets(self, loss: DINOLoss, logits: Tensor, temp: float) -> Tensor:
        """Teacher targets of the class tokens, centred as configured.

        Args:
            loss: the DINO loss (its centre, for softmax centring, is updated).
            logits: (M, K) teacher logits (Sinkhorn-Knopp overwrites them when float32).
            temp: teacher temperature.

        Returns:
            (M, K) target probabilities.
        """
        if self.centering == "sinkhorn_knopp":
            return loss.sinkhorn_knopp_teacher(logits, temp, inplace=True)
        targets = loss.softmax_center_teacher(logits, temp)
        loss.update_center(logits)
        return targets

    def ibot_targets(
        self, loss: iBOTPatchLoss, logits: Tensor, temp: float, n_masked: Tensor
    ) -> Tensor:
        """Teacher targets of the masked patch tokens, centred as configured.

        Args:
            loss: the iBOT loss (its centre, for softmax centring, is updated).
            logits: (M, K) teacher logits of the masked patches (Sinkhorn-Knopp overwrites
                them when float32).
            temp: teacher temperature.
            n_masked: (1,) count of masked patches, for Sinkhorn-Knopp.

        Returns:
            (M, K) target probabilities.
        """
        if self.centering == "sinkhorn_knopp":
            return loss.sinkhorn_knopp_teacher(logits, temp, n_masked, inplace=True)
        targets = loss.softmax_center_teacher(logits, temp)
        loss.update_center(logits)
        return targets

    def __call__(
        self,
        student: Branch,
        teacher: Branch,
        criteria: Criteria,
        global_crops: Tensor,
        local_crops: Tensor,
        masks: Tensor | None,
        teacher_temp: float,
    ) -> dict[str, Tensor]:
        """The losses of one batch and diagnostics of the teacher.

        Args:
            student: the student branch.
            teacher: the EMA teacher branch (run without gradients).
            criteria: the loss modules.
            global_crops: (n_global * B, C, G, G), view-major.
            local_crops: (L * B, C, l, l), view-major (L may be 0).
            masks: (n_global * B, N) iBOT masks of the global crops, None without iBOT.
            teacher_temp: teacher temperature of this step.

        Returns:
            ``loss`` (weighted total), ``dino_loss``, ``koleo_loss`` and ``ibot_loss`` when
            used, ``teacher_entropy``, ``teacher_feature_std``, ``teacher_temp`` and, with two
            images or more, ``teacher_prototypes_used`` (exp of the entropy of the batch's
            mean target: below ~2, one prototype wins every input).
        """
        n_global = self.n_global
        batch_size = global_crops.shape[0] // n_global
        n_local = local_crops.shape[0] // max(batch_size, 1)

        # Teacher: global crops only, targets crossed between the two views.
        with torch.no_grad():
            t_cls, _, t_patches = teacher.split(teacher.encode(global_crops, None))
            (t_cls_logits,), t_masked = _heads(
                teacher, [t_cls], t_patches[masks] if masks is not None else None
            )
            t_cls_logits = torch.cat(t_cls_logits.chunk(n_global)[::-1])
            t_dino = self.dino_targets(criteria.dino, t_cls_logits, teacher_temp)
            if masks is not None and t_masked is not None:
                n_masked = masks.sum()
                t_ibot = self.ibot_targets(
                    criteria.ibot, t_masked, teacher_temp, n_masked.reshape(1).float()
                )

        # Student: masked global crops and local crops, packed into one pass when it can.
        s_local_tokens: Tensor | None = None
        if n_local > 0 and student.encode_packed is not None:
            s_global_tokens, s_local_tokens = student.encode_packed(
                [global_crops, local_crops], [masks, None]
            )
        else:
            s_global_tokens = student.encode(global_crops, masks)
        s_cls, _, s_patches = student.split(s_global_tokens)
        cls_tokens = [s_cls]
        if n_local > 0:
            if s_local_tokens is None:
                s_local_tokens = student.encode(local_crops, None)
            cls_tokens.append(student.split(s_local_tokens)[0])
        cls_logits, s_masked = _heads(
            student, cls_tokens, s_patches[masks] if masks is not None else None
        )
        s_global_logits = cls_logits[0]
        n_terms = n_global * (n_global - 1) + n_global * n_local
        t_views = t_dino.chunk(n_global)
        s_views = s_global_logits.chunk(n_global)
        # t_views are already crossed: view i of the student meets the other teacher view.
        dino_global = _total(criteria.dino([s], [t]) for s, t in zip(s_views, t_views, strict=True))
        dino_local = s_global_logits.new_zeros(())
        if n_local > 0:
            dino_local = criteria.dino(list(cls_logits[1].chunk(n_local)), list(t_views))
        dino = (dino_global + dino_local) / n_terms
        out = {"dino_loss": dino}
        total = self.dino_loss_weight * dino
        if self.koleo_loss_weight > 0:
            koleo = _total(criteria.koleo(c) for c in s_cls.chunk(n_global))
            out["koleo_loss"] = koleo
            total = total + self.koleo_loss_weight * koleo
        if masks is not None and s_masked is not None:
            ibot = criteria.ibot.forward_masked(s_masked, t_ibot, student_masks_flat=masks)
            out["ibot_loss"] = ibot
            total = total + self.ibot_loss_weight * ibot
        out["loss"] = total
        with torch.no_grad():  # diagnostics stay on the device: nothing here waits for them
            out["teacher_entropy"] = torch.special.entr(t_dino).sum(-1).mean()
            out["teacher_feature_std"] = F.normalize(t_cls.float(), dim=-1).std(0).mean()
            if batch_size >= 2:  # two views of one image rightly share their prototypes
                batch_target = t_dino.mean(0)
                out["teacher_prototypes_used"] = torch.special.entr(batch_target).sum().exp()
            out["teacher_temp"] = torch.tensor(teacher_temp)
        return out


def _heads(
    branch: Branch, cls_tokens: list[Tensor], masked: Tensor | None
) -> tuple[list[Tensor], Tensor | None]:
    """Float32 head outputs of groups of class tokens and of masked patch tokens.

    Every group goes through the DINO head in one call, the masked patches too when iBOT
    shares it (as the official code concatenates them): the 65,536-prototype last layer, its
    weight normalisation and, under autocast, its cast run once per branch and step.

    Args:
        branch: the student or the teacher.
        cls_tokens: groups of class tokens, each (n_i, D).
        masked: (M, D) masked patch tokens, or None.

    Returns:
        the logits of each group, and those of the masked patches (None without them).
    """
    inputs = list(cls_tokens)
    shared = masked is not None and branch.ibot_head is branch.dino_head
    if shared and masked is not None:
        inputs.append(masked)
    logits = list(branch.dino_head(torch.cat(inputs)).float().split([len(x) for x in inputs]))
    if shared:
        return logits[:-1], logits[-1]
    return logits, None if masked is None else branch.ibot_head(masked).float()


def _total(terms: Iterable[Tensor]) -> Tensor:
    """The sum of loss terms, added in order (as the builtin ``sum`` would, without its 0)."""
    iterator = iter(terms)
    total = next(iterator)
    for term in iterator:
        total = total + term
    return total


__all__ = ["Branch", "Centering", "Criteria", "DINOv2Objective"]
