"""DINOv2 self-supervised pretraining as a TorchGeo-style Lightning task."""

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torchgeo.tasks import BaseTask

from geodino.callbacks import CollapseGuard, TrainingSummary
from geodino.checkpoints import AtomicModelCheckpoint
from geodino.errors import ConfigError
from geodino.export import BackboneSpec
from geodino.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from geodino.models import DINOHead, Encoder, PackedEncoder, as_encoder
from geodino.models.fusion import check_modalities, draw_modality_dropout, series_inputs
from geodino.tasks.loss_check import DeferredLossCheck
from geodino.tasks.objective import Branch, Criteria, DINOv2Objective
from geodino.tasks.schedules import CosineSchedule
from geodino.tasks.spectral import SpectralBatch, spectral
from geodino.transforms.masking import sample_ibot_masks

#: Parameters without weight decay, as in DINOv2: biases, norms and layer-scale gammas.
_NO_DECAY = (".bias", "norm", "gamma")


class DINOv2Task(BaseTask):
    """Student and EMA teacher ViTs trained with DINO, iBOT and KoLeo losses.

    The data module delivers ``global_crops`` (2B, C, G, G) and ``local_crops`` (LB, C, l, l),
    view-major; the task draws iBOT masks for the global crops. All schedules count optimiser
    steps and span ``trainer.max_steps``.

    With ``modalities`` the backbone is a :class:`~geodino.models.FusionViT`: the crops' bands
    are the modalities' bands stacked in that order (the data module's ``band_groups``), split
    per modality before the backbone; iBOT masks the fused patch tokens, and with
    ``modality_dropout`` the student sees random subsets of the modalities while the teacher
    sees them all.

    Args:
        model: timm architecture (``vit_*_patch14*_dinov2`` family or any timm ViT).
        in_chans: number of input bands; must equal the data module's.
        weights: initial backbone weights (local file or TorchGeo weights enum).
        band_names: names of the input bands, used to adapt weights of other bands.
        model_kwargs: further ``timm.create_model`` arguments (depth, embed_dim, num_heads,
            drop_path_rate, img_size, ...).
        modalities: band count of each modality in channel order, e.g. ``{'s2': 13, 's1':
            2}`` (must match the data's band groups; ``in_chans`` is their total); None trains
            a single-modality ViT.
        fusion: fusion mode of the multimodal backbone: ``early``, ``linear`` or ``xattn``.
        fusion_kwargs: more :class:`~geodino.models.FusionViT` arguments (``xattn_layers``,
            ``xattn_heads``, ``xattn_dropout``).
        modality_dropout: probability of hiding each modality of each student sample (never
            all of them), so the model also works with one modality.
        head_out_dim: prototypes of the DINO head.
        head_hidden_dim: hidden width of the heads.
        head_bottleneck_dim: bottleneck width of the heads.
        head_nlayers: MLP layers of the heads.
        ibot_separate_head: give iBOT its own head (else it shares the DINO head).
        ibot_head_out_dim: prototypes of a separate iBOT head.
        source_heads: DINO (and separate iBOT) heads, one per source of a mixed-sensor
            data module (:class:`~geodino.datamodules.MixedGeoDataModule`, whose batches say
            their source): source *i*'s batches train head *i*, so that each sensor's chips
            spread over prototypes of their own (docs/any-sensor.md measures it); 1 shares
            one head. Under DDP it needs ``strategy: ddp_find_unused_parameters_true``.
        dino_loss_weight: weight of the DINO loss.
        ibot_loss_weight: weight of the iBOT loss (0 disables masking).
        koleo_loss_weight: weight of the KoLeo regulariser (0 disables it).
        centering: ``sinkhorn_knopp`` or ``softmax`` centring of teacher outputs.
        student_temp: student temperature.
        teacher_temp: teacher temperature after warmup.
        warmup_teacher_temp: teacher temperature at step 0.
        teacher_temp_warmup_fraction: fraction of the run warming the teacher temperature.
        mask_probability: fraction of global crops that get iBOT masks.
        mask_ratio: range of the masked fraction of patches.
        base_lr: learning rate for a global batch of ``lr_reference_batch`` (sqrt scaling).
        lr_reference_batch: batch size that ``base_lr`` refers to.
        min_lr: final learning rate.
        warmup_fraction: fraction of the run with linear lr warmup.
        weight_decay: initial weight decay.
        weight_decay_end: final weight decay.
        momentum_teacher: initial EMA momentum of the teacher.
        final_momentum_teacher: final EMA momentum of the teacher.
        freeze_last_layer_fraction: fraction of the run with the heads' last layers frozen.
        layerwise_decay: layer-wise lr decay of the backbone.
        patch_embed_lr_mult: lr multiplier of the patch embedding.
        clip_grad: max gradient norm, per student module (0 disables clipping).
        adamw_betas: AdamW betas.
        mask_seed: seed of the iBOT masks (combined with step and rank).
        pack_crops: run the student's global and local crops through the backbone in one
            packed pass per block (each crop attends to itself only) where the backbone can
            (timm ViTs; a FusionViT runs two passes); False always runs two passes. Equal
            results; on the CPU as fast at ViT-S size, faster for small models
            (``benchmarks/packed_attention.py``); fewer kernel launches on a GPU.
        adamw_implementation: AdamW kernel: ``fused``, ``foreach``, ``for_loop``, or
            ``auto`` (fused on CPU and CUDA, torch's default elsewhere). Equal results; on
            the CPU fused steps a ViT-S/14 with its head 4.3x faster than the for-loop.
        compile_backbone: ``torch.compile`` the backbones' token forwards (student and
            teacher); the first steps are slow while it compiles (on the CPU, 3 minutes for
            a ViT-S/14, then 1.03x faster: off until measured on a GPU).
        channels_last: keep the patch-embedding convolutions and the crops channels-last
            (on the CPU 8 % slower for the convolution, hence off).
        checkpoint_every_n_steps: optimiser steps between checkpoints.
        keep_last_k: checkpoints kept besides ``last.ckpt``.
    """

    monitor = "train_loss"
    mode = "min"

    def __init__(
        self,
        model: str = "vit_small_patch14_reg4_dinov2",
        in_chans: int = 13,
        weights: str | None = None,
        band_names: Sequence[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        modalities: dict[str, int] | None = None,
        fusion: Literal["early", "linear", "xattn"] = "early",
        fusion_kwargs: dict[str, Any] | None = None,
        modality_dropout: float = 0.0,
        head_out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 3,
        ibot_separate_head: bool = False,
        ibot_head_out_dim: int = 65536,
        source_heads: int = 1,
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        centering: Literal["sinkhorn_knopp", "softmax"] = "sinkhorn_knopp",
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_fraction: float = 0.3,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        base_lr: float = 0.004,
        lr_reference_batch: int = 1024,
        min_lr: float = 1e-6,
        warmup_fraction: float = 0.1,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        momentum_teacher: float = 0.992,
        final_momentum_teacher: float = 1.0,
        freeze_last_layer_fraction: float = 0.01,
        layerwise_decay: float = 0.9,
        patch_embed_lr_mult: float = 0.2,
        clip_grad: float = 3.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        mask_seed: int = 0,
        pack_crops: bool = True,
        adamw_implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto",
        compile_backbone: bool = False,
        channels_last: bool = False,
        checkpoint_every_n_steps: int = 500,
        keep_last_k: int = 3,
    ) -> None:
        """Build student, teacher, heads and losses."""
        if centering not in ("sinkhorn_knopp", "softmax"):
            raise ConfigError(
                f"centering must be 'sinkhorn_knopp' or 'softmax', got {centering!r}."
            )
        if in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {in_chans}.")
        if source_heads < 1:
            raise ConfigError(f"source_heads must be >= 1, got {source_heads}.")
        if modalities is not None:
            total = sum(check_modalities(modalities).values())
            if in_chans != total:
                raise ConfigError(
                    f"in_chans={in_chans} but the modalities {dict(modalities)} have {total} "
                    f"bands; set model.init_args.in_chans: {total}."
                )
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError(f"modality_dropout={modality_dropout} must lie in [0, 1).")
        if modality_dropout > 0 and (modalities is None or len(modalities) < 2):
            raise ConfigError(
                "modality_dropout needs two or more modalities (model.init_args.modalities)."
            )
        self.weights = weights
        super().__init__()
        self._loss_check = DeferredLossCheck()

    # --- models ------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Student backbone and heads, their EMA teacher copy and the iBOT mask token."""
        hp = self.hparams
        backbone = BackboneSpec.from_hyper_parameters(hp, type(self).__name__).build(self.weights)
        dim = backbone.embed_dim
        head_args = dict(
            hidden_dim=hp["head_hidden_dim"],
            bottleneck_dim=hp["head_bottleneck_dim"],
            nlayers=hp["head_nlayers"],
        )
        student = nn.ModuleDict({"backbone": backbone})
        for source in range(hp.get("source_heads", 1)):
            student[_head_key("dino_head", source)] = DINOHead(dim, hp["head_out_dim"], **head_args)
            if hp["ibot_separate_head"]:
                student[_head_key("ibot_head", source)] = DINOHead(
                    dim, hp["ibot_head_out_dim"], **head_args
                )
        self.student = student
        if hp["channels_last"]:
            # a ViT's only 4-d weights are its patch-embedding convolutions
            student.to(memory_format=torch.channels_last)
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self._compiled: dict[tuple[str, bool], Callable[..., Any]] = {}
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_size = backbone.patch_size

    def configure_losses(self) -> None:
        """DINO, iBOT and KoLeo losses (their centres are saved with the model)."""
        hp = self.hparams
        self.dino_loss = DINOLoss(hp["head_out_dim"], student_temp=hp["student_temp"])
        ibot_dim = hp["ibot_head_out_dim"] if hp["ibot_separate_head"] else hp["head_out_dim"]
        self.ibot_loss = iBOTPatchLoss(ibot_dim, student_temp=hp["student_temp"])
        self.koleo_loss = KoLeoLoss()
        self.objective = DINOv2Objective(
            dino_loss_weight=hp["dino_loss_weight"],
            ibot_loss_weight=hp["ibot_loss_weight"],
            koleo_loss_weight=hp["koleo_loss_weight"],
            centering=hp["centering"],
        )

    def forward(self, images: Tensor | dict[str, Tensor]) -> Tensor:
        """Teacher backbone tokens (what export and evaluation use).

        Args:
            images: (B, C, H, W) normalised images; for a fusion backbone also a dict of
                modality images, any non-empty subset of its modalities.

        Returns:
            normalised tokens (B, 1 + R + N, D).
        """
        return self._encoder("teacher").forward_tokens(images)

    @property
    def model(self) -> nn.Module:
        """The teacher backbone, the model that pretraining produces."""
        return self.teacher["backbone"]

    def _encoder(self, which: Literal["student", "teacher"]) -> Encoder:
        return as_encoder((self.student if which == "student" else self.teacher)["backbone"])

    # --- schedules ---------------------------------------------------------------------
    @property
    def warmup_steps(self) -> int:
        """Optimiser steps of the learning-rate warm-up of the run being fitted.

        Raises:
            ConfigError: if the trainer has no ``max_steps``.
        """
        fraction: float = self.hparams["warmup_fraction"]
        return round(fraction * self._total_steps())

    def _total_steps(self) -> int:
        steps = self.trainer.max_steps
        if steps is None or steps < 1:
            raise ConfigError(
                "DINOv2Task schedules are iteration-based: set trainer.max_steps (e.g. "
                "--trainer.max_steps=10000)."
            )
        return steps

    def _schedules(self) -> dict[str, CosineSchedule]:
        hp = self.hparams
        total = self._total_steps()
        world = self.trainer.world_size
        # Lightning sets trainer.datamodule at run time without declaring it
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        batch = datamodule.batch_size if datamodule else 1
        global_batch = batch * world * self.trainer.accumulate_grad_batches
        lr = hp["base_lr"] * math.sqrt(global_batch / hp["lr_reference_batch"])
        warmup = self.warmup_steps
        freeze = round(hp["freeze_last_layer_fraction"] * total)
        return {
            "lr": CosineSchedule(lr, hp["min_lr"], total, warmup),
            "last_layer_lr": CosineSchedule(lr, hp["min_lr"], total, warmup, freeze_steps=freeze),
            "wd": CosineSchedule(hp["weight_decay"], hp["weight_decay_end"], total),
            "momentum": CosineSchedule(hp["momentum_teacher"], hp["final_momentum_teacher"], total),
            "teacher_temp": CosineSchedule(
                hp["teacher_temp"],
                hp["teacher_temp"],
                total,
                round(hp["teacher_temp_warmup_fraction"] * total),
                start_warmup=hp["warmup_teacher_temp"],
            ),
        }

    def setup(self, stage: str) -> None:
        """Check the data module agrees with the model before any step runs.

        Args:
            stage: the Lightning stage.
        """
        datamodule = (
            self.trainer.datamodule  # type: ignore[attr-defined]
            if self._trainer is not None
            else None
        )
        if datamodule is None:
            return
        hp = self.hparams
        bands = getattr(datamodule, "num_bands", None)
        groups = getattr(datamodule, "band_groups", None)
        modalities = hp.get("modalities")
        if modalities and list((groups or {}).items()) != list(dict(modalities).items()):
            raise ConfigError(
                f"model.init_args.modalities={dict(modalities)} but the data deliver "
                f"{groups or f'{bands} bands of one modality'}; the data's band groups (names, "
                "band counts and order) must equal the model's modalities: fix the config's "
                "modalities or the data's datasets."
            )
        if groups and not modalities:
            raise ConfigError(
                f"the data deliver the modalities {groups} but the model is a single-modality "
                f"ViT; set model.init_args.modalities: {groups} (and a fusion mode) or give the "
                "data one dataset."
            )
        if bands is not None and bands != hp["in_chans"]:
            names = getattr(datamodule, "band_names", [])
            raise ConfigError(
                f"model.in_chans={hp['in_chans']} but the data deliver {bands} bands "
                f"({', '.join(names)}); set --model.init_args.in_chans={bands} or select "
                "bands in the dataset."
            )
        multicrop = getattr(datamodule, "multicrop", None)
        for name in ("global_crops_size", "local_crops_size"):
            size = getattr(multicrop, name, None)
            if size is not None and size % self.patch_size:
                raise ConfigError(
                    f"data.multicrop.{name}={size} is not divisible by the patch size "
                    f"{self.patch_size} of {hp['model']}; use a multiple such as "
                    f"{size // self.patch_size * self.patch_size or self.patch_size}."
                )
        batch = getattr(datamodule, "batch_size", None)
        if hp["koleo_loss_weight"] > 0 and batch is not None and batch < 2:
            raise ConfigError(
                f"data.batch_size={batch}: the KoLeo loss needs at least 2 samples per "
                "device; raise the batch size or set model.koleo_loss_weight: 0."
            )

    # --- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with DINOv2's parameter groups (layer-wise lr decay, no decay on norms)."""
        backbone = self.student["backbone"]
        encoder = self._encoder("student")
        depth = encoder.depth
        groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
        named = [(f"backbone.{n}", p) for n, p in backbone.named_parameters()]
        named += [("mask_token", self.mask_token)]
        for head, module in self.student.items():
            if head != "backbone":
                named += [(f"{head}.{n}", p) for n, p in module.named_parameters()]
        for name, param in named:
            if not param.requires_grad:
                continue
            lr_mult = self.hparams["layerwise_decay"] ** (depth + 1 - _layer_id(name, encoder))
            if "patch_embed" in name:
                lr_mult *= self.hparams["patch_embed_lr_mult"]
            wd_mult = 0.0 if any(k in name for k in _NO_DECAY) else 1.0
            key = (lr_mult, wd_mult, "last_layer" in name)
            groups.setdefault(key, []).append(param)
        param_groups = [
            {"params": params, "lr_multiplier": lr, "wd_multiplier": wd, "is_last_layer": last}
            for (lr, wd, last), params in groups.items()
        ]
        implementation = self.hparams["adamw_implementation"]
        if implementation == "auto" and self.device.type in ("cpu", "cuda"):
            implementation = "fused"
        kernel = {
            "fused": {"fused": True},
            "foreach": {"foreach": True},
            "for_loop": {"foreach": False},
        }.get(implementation, {})
        return torch.optim.AdamW(
            param_groups, lr=0.0, betas=tuple(self.hparams["adamw_betas"]), **kernel
        )

    def on_fit_start(self) -> None:
        """Build the schedules once the trainer knows the run length and world size.

        Raises:
            ConfigError: for heads per source under DDP that does not look for the
                parameters a step leaves unused (the other sources' heads).
        """
        self._schedule = self._schedules()
        heads = self.hparams.get("source_heads", 1)
        wrapped = self.trainer.strategy.model
        if (
            heads > 1
            and isinstance(wrapped, DistributedDataParallel)
            and not wrapped.find_unused_parameters
        ):
            raise ConfigError(
                f"source_heads={heads} trains one source's heads a step, so DDP must look "
                "for the parameters a step leaves unused: set "
                "--trainer.strategy=ddp_find_unused_parameters_true."
            )

    def _apply_schedules(self, optimizer: torch.optim.Optimizer) -> None:
        step = self.global_step
        lr = self._schedule["lr"](step)
        last_lr = self._schedule["last_layer_lr"](step)
        wd = self._schedule["wd"](step)
        for group in optimizer.param_groups:
            base = last_lr if group["is_last_layer"] else lr
            group["lr"] = base * group["lr_multiplier"]
            group["weight_decay"] = wd * group["wd_multiplier"]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradient norm of each student module separately, as DINOv2 does.

        Args:
            optimizer: the optimizer.
            gradient_clip_val: Lightning's clip value (used when ``clip_grad`` is 0).
            gradient_clip_algorithm: Lightning's clip algorithm.
        """
        clip = self.hparams["clip_grad"]
        if clip > 0:
            for module in self.student.values():
                nn.utils.clip_grad_norm_(module.parameters(), clip)
        elif gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Set this step's lr and weight decay, step, then update the EMA teacher.

        Args:
            epoch: current epoch.
            batch_idx: batch index.
            optimizer: the (Lightning-wrapped) optimizer.
            optimizer_closure: the closure computing the loss and gradients.
        """
        self._apply_schedules(optimizer)
        optimizer.step(closure=optimizer_closure)
        self._update_teacher(self._schedule["momentum"](self.global_step))

    @torch.no_grad()
    def _update_teacher(self, momentum: float) -> None:
        student: list[Tensor] = list(self.student.parameters())
        teacher: list[Tensor] = list(self.teacher.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

    # --- steps -------------------------------------------------------------------------
    def _masks(self, n_images: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        step = self.global_step
        rank = self.global_rank
        generator = torch.Generator().manual_seed(
            (self.hparams["mask_seed"] * 1_000_003 + step) * 4099 + rank
        )
        masks = sample_ibot_masks(
            n_images,
            grid,
            self.hparams["mask_probability"],
            tuple(self.hparams["mask_ratio"]),
            generator=generator,
        )
        if device.type == "cuda":  # from pinned memory the copy does not wait for the device
            masks = masks.pin_memory()
        return masks.to(device, non_blocking=True)

    def _tokens(
        self,
        which: Literal["student", "teacher"],
        images: Tensor,
        masks: Tensor | None = None,
        doy: Tensor | None = None,
    ) -> Tensor:
        """Backbone tokens of crops; a multimodal student sees modality-dropped inputs.

        Crops of time series (n B, T, C, h, w) go in as one series per modality, with the
        batch's (B, T) days of year repeated for the n views.
        """
        encoder = self._encoder(which)
        inputs: Tensor | dict[str, Tensor] = images
        if doy is not None:
            inputs = series_inputs(images, doy, encoder.modalities)
        present = None
        p = self.hparams.get("modality_dropout", 0.0)
        if which == "student" and p > 0 and encoder.modalities is not None:
            # seeded by step, rank and crop size (global and local crops draw apart)
            generator = torch.Generator().manual_seed(
                (
                    (self.hparams["mask_seed"] * 1_000_003 + self.global_step) * 4099
                    + self.global_rank
                )
                * 8191
                + images.shape[-1]
                + 1
            )
            present = draw_modality_dropout(images.shape[0], list(encoder.modalities), p, generator)
            present = {m: v.to(images.device) for m, v in present.items()}
        forward = self._compile(which, False, encoder.forward_tokens)
        tokens: Tensor = forward(
            inputs, masks, self.mask_token if masks is not None else None, present
        )
        return tokens

    def _compile(self, which: str, packed: bool, forward: Callable[..., Any]) -> Callable[..., Any]:
        """The backbone forward, compiled once per branch and kind with ``compile_backbone``."""
        if not self.hparams["compile_backbone"]:
            return forward
        key = (which, packed)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(forward)
        return self._compiled[key]

    def _packed_tokens(
        self, encoder: PackedEncoder, crops: Sequence[Tensor], masks: Sequence[Tensor | None]
    ) -> list[Tensor]:
        """Student tokens of several crop groups in one packed pass."""
        token = self.mask_token if any(m is not None for m in masks) else None
        forward = self._compile("student", True, encoder.forward_tokens_packed)
        tokens: list[Tensor] = forward(crops, masks, token)
        return tokens

    def _spectral_tokens(
        self,
        which: Literal["student", "teacher"],
        crops: Tensor,
        masks: Tensor | None,
        bands: SpectralBatch,
    ) -> Tensor:
        """Tokens of crops of bands with identities, hiding each crop's masked bands."""
        encoder = spectral(self._encoder(which))
        forward = self._compile(f"{which}_spectral", False, encoder.forward_spectral)
        token = self.mask_token if masks is not None else None
        tokens: Tensor = forward(crops, bands.band_ids, bands.band_mask(crops, which), masks, token)
        return tokens

    def _branch(
        self,
        which: Literal["student", "teacher"],
        doy: Tensor | None = None,
        bands: SpectralBatch | None = None,
    ) -> Branch:
        modules = self.student if which == "student" else self.teacher
        source = self._head_source(bands)
        heads = dict(modules.items())
        dino_head = heads[_head_key("dino_head", source)]
        ibot_head = heads.get(_head_key("ibot_head", source), dino_head)
        encoder = self._encoder(which)
        if bands is not None:  # crops of several sensors: band identities and masks
            return Branch(
                encode=lambda crops, masks: self._spectral_tokens(which, crops, masks, bands),
                split=encoder.split_tokens,
                dino_head=dino_head,
                ibot_head=ibot_head,
            )
        encode_packed = None
        # the student's modality dropout draws per crop size, so it keeps separate passes
        dropout = self.hparams["modality_dropout"] > 0 and encoder.modalities is not None
        if (
            doy is None
            and which == "student"
            and self.hparams["pack_crops"]
            and isinstance(encoder, PackedEncoder)
            and not dropout
        ):
            encode_packed = functools.partial(self._packed_tokens, encoder)
        return Branch(
            encode=lambda crops, masks: self._tokens(which, crops, masks, doy),
            split=encoder.split_tokens,
            dino_head=dino_head,
            ibot_head=ibot_head,
            encode_packed=encode_packed,
        )

    def _head_source(self, bands: SpectralBatch | None) -> int:
        """The index of the heads that a batch trains: its source's, with ``source_heads``.

        Raises:
            ConfigError: if there are heads per source but the batch says no source in range.
        """
        heads = self.hparams.get("source_heads", 1)
        if heads == 1:
            return 0
        source = None if bands is None else bands.source
        if source is None or not 0 <= source < heads:
            raise ConfigError(
                f"source_heads={heads} gives each source of a mixed-sensor data module heads "
                f"of its own, but this batch is of source {source!r}; set "
                "model.init_args.source_heads to the number of the data module's sources "
                "(geodino.datamodules.MixedGeoDataModule), or to 1 for one data source."
            )
        return source

    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        global_crops = batch["global_crops"]
        grid = (
            global_crops.shape[-2] // self.patch_size,
            global_crops.shape[-1] // self.patch_size,
        )
        use_ibot = self.hparams["ibot_loss_weight"] > 0
        masks = self._masks(global_crops.shape[0], grid, global_crops.device) if use_ibot else None
        local_crops = batch["local_crops"]
        if self.hparams["channels_last"]:
            global_crops = global_crops.contiguous(memory_format=torch.channels_last)
            if local_crops.ndim == 4:  # without local crops, an empty 1-d tensor
                local_crops = local_crops.contiguous(memory_format=torch.channels_last)
        # time series: one iBOT mask per crop, shared by its dates, since the backbone
        # pools the dates into one token per patch before the blocks (docs/time-series.md)
        doy = batch.get("doy")
        bands = SpectralBatch.from_batch(batch)
        return self.objective(
            self._branch("student", doy, bands),
            self._branch("teacher", doy, bands),
            Criteria(self.dino_loss, self.ibot_loss, self.koleo_loss),
            global_crops,
            local_crops,
            masks,
            self._schedule["teacher_temp"](self.global_step),
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One DINOv2 step on a multi-crop batch.

        Args:
            batch: ``global_crops`` and ``local_crops`` from the data module.
            batch_idx: batch index.

        Returns:
            the total loss.

        Raises:
            FloatingPointError: if the loss of this or an earlier step is NaN or infinite
                (read every step on the CPU, every 25 steps on an accelerator).
        """
        if "global_crops" not in batch:
            raise ConfigError(
                "DINOv2Task needs multi-crop batches (global_crops, local_crops): use "
                "geodino.datamodules.GeoDINODataModule or FolderDINODataModule."
            )
        out = self._losses(batch)
        loss = out["loss"]
        # nothing here reads a value back from the device: the logged tensors stay there,
        # host values are logged as CPU tensors, and the loss check reads in batches
        self._loss_check.push(
            self.global_step, {k: v for k, v in out.items() if v.device == loss.device}
        )
        batch_size = batch["global_crops"].shape[0] // 2
        if self._loss_check.due:
            shown = torch.tensor(self._loss_check.read())
            self.log("loss", shown, prog_bar=True, logger=False, batch_size=batch_size)
        self.log("train_loss", loss, batch_size=batch_size)
        for key, value in out.items():
            if key != "loss":
                self.log(f"train/{key}", value, batch_size=batch_size)
        for key in ("lr", "momentum"):
            value = torch.tensor(self._schedule[key](self.global_step))
            self.log(f"train/{key}", value, batch_size=batch_size)
        return loss

    def on_train_end(self) -> None:
        """Check the losses of the last steps.

        Raises:
            FloatingPointError: if one of them is NaN or infinite.
        """
        self._loss_check.read()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Log collapse diagnostics of teacher features on validation chips.

        Args:
            batch: ``image`` (B, C, H, W) normalised, or (B, T, C, H, W) with ``doy``.
            batch_idx: batch index.
        """
        encoder = self._encoder("teacher")
        images, doy, ids = batch["image"], batch.get("doy"), batch.get("band_ids")
        if ids is not None:
            tokens = spectral(encoder).forward_spectral(images, ids)
        elif doy is not None:
            tokens = self(series_inputs(images, doy, encoder.modalities))
        else:
            tokens = self(images)
        cls = encoder.split_tokens(tokens)[0]
        std = F.normalize(cls.float(), dim=-1).std(0).mean()
        self.log("val/teacher_feature_std", std, batch_size=cls.shape[0])

    # --- checkpoints -------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """The run's checkpoints, summary files and collapse guard.

        Atomic checkpoints every ``checkpoint_every_n_steps`` steps, the last K kept (unless
        the trainer disables checkpointing), ``metrics.json`` plus ``training_curves.png`` in
        the run folder at the end, and a :class:`~geodino.callbacks.CollapseGuard` with its
        defaults unless the trainer's callbacks hold one (which then applies as given).
        """
        callbacks: list[Callback] = [TrainingSummary()]
        # Lightning sets the trainer's callbacks at run time; its stub does not declare them
        trainer = self._trainer
        trainer_callbacks = trainer.callbacks if trainer is not None else []  # type: ignore[attr-defined]
        if not any(isinstance(c, CollapseGuard) for c in trainer_callbacks):
            callbacks.append(CollapseGuard())
        if self._trainer is None or self._trainer.checkpoint_callback is not None:
            callbacks.append(
                AtomicModelCheckpoint(
                    filename="step{step:08d}",
                    auto_insert_metric_name=False,
                    every_n_train_steps=self.hparams["checkpoint_every_n_steps"],
                    save_top_k=self.hparams["keep_last_k"],
                    monitor="step",
                    mode="max",
                    save_last=True,
                )
            )
        return callbacks

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the global RNG states (drop path, dropout) for an exact resume.

        Args:
            checkpoint: the checkpoint being written.

        Raises:
            FloatingPointError: if a loss since the last check is NaN or infinite (the
                checkpoint is not written).
        """
        self._loss_check.read()
        checkpoint["geodino_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["geodino_rng"]["cuda"] = torch.cuda.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG states saved by :meth:`on_save_checkpoint`.

        Args:
            checkpoint: the checkpoint being read.
        """
        rng = checkpoint.get("geodino_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])


def _head_key(kind: Literal["dino_head", "ibot_head"], source: int) -> str:
    """The student's and teacher's key of a head: source 0's keeps the one-head name."""
    return kind if source == 0 else f"{kind}_{source}"


def _layer_id(name: str, encoder: Encoder) -> int:
    """Layer index for layer-wise lr decay: embeddings 0, block i i+1, the rest depth+1."""
    if name.startswith("backbone."):
        return encoder.layer_id(name[len("backbone.") :])
    if name == "mask_token":
        return 0
    return encoder.depth + 1
