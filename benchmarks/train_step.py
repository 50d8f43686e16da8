"""Images/s and peak memory of a DINOv2Task step vs a plain timm step or the official step.

Default mode: both run in the same process on the same device, on random 13-band chips held
in memory so that reading files does not enter the figure. The DINOv2 step includes the
on-device multi-crop (2 global + N local crops), iBOT masks, student and EMA teacher, heads
and losses; the baseline is one forward/backward/AdamW step of the same backbone on one crop
per image.

    python benchmarks/train_step.py --model vit_small_patch14_reg4_dinov2 --batch 8 --steps 5
    python benchmarks/train_step.py --device cuda --precision bf16-mixed --batch 64

Side by side (``--official PATH``, a checkout of facebookresearch/dinov2, which geodino
cannot ship): the same work on both sides (ViT-S/14 with 4 registers or ViT-B/14, 13 bands,
2 global + 8 local crops, 65,536 prototypes, DINO + iBOT + KoLeo with Sinkhorn-Knopp, AdamW
with DINOv2's parameter groups, gradient clipping, EMA teacher); geodino through a Lightning
``Trainer`` (its on-device multi-crop included), the official ``SSLMetaArch.forward_backward``
with the official training loop's clipping, AdamW step and EMA update, on batches collated
beforehand by the official ``collate_data_and_cast`` (its masks, its padded upper bound).
Each side runs in its own process (pinned with ``taskset`` to ``--core`` on the CPU, one
thread), the sides alternating, for ``--rounds`` rounds over every batch size and precision.
It prints images/s per side, the ratio, peak memory (max RSS; on CUDA the allocator's peak)
and a phase breakdown per step: backbone forwards, heads + losses (+ Sinkhorn-Knopp),
backward, optimiser (clipping, AdamW, EMA; what remains of the step). On CUDA it adds
tokens/s and MFU, and the official side uses the real xFormers when it imports (else a
plain-PyTorch stand-in: ``official_dinov2.py``).

    python benchmarks/train_step.py --official /tmp/dinov2 --batches 2 4 8 \
        --precisions 32-true bf16-mixed --rounds 3 --warmup 2 --steps 3
    python benchmarks/train_step.py --official /tmp/dinov2 --device cuda --batches 64 \
        --precisions bf16-mixed --rounds 2
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn


class InMemoryChips(torch.utils.data.Dataset):
    """Random uint16-like chips, fixed in memory."""

    def __init__(self, n: int, bands: int, size: int) -> None:
        self.images = torch.randint(200, 4000, (n, bands, size, size)).float()
        self.band_names = [f"B{i + 1}" for i in range(bands)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class StepTimer(Callback):
    """Times optimiser steps after a warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup


def peak_memory_mb(device: str) -> float:
    """Peak memory of the process (CPU: max RSS) or of the GPU allocator."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_and_data(args: argparse.Namespace, n_chips: int) -> tuple[Any, Any]:
    """The benchmark's data module over ``n_chips`` in-memory chips and its DINOv2Task."""
    from geodino.datamodules import FolderDINODataModule
    from geodino.tasks import DINOv2Task

    data = InMemoryChips(n_chips, args.bands, args.chip)
    dm = FolderDINODataModule(
        data,
        batch_size=args.batch,
        statistics_chips=16,
        multicrop={
            "global_crops_size": args.global_size,
            "local_crops_size": args.local_size,
            "local_crops_number": args.local_crops,
        },
    )
    task = DINOv2Task(
        model=args.model,
        in_chans=args.bands,
        head_out_dim=args.head_out_dim,
        model_kwargs={"img_size": args.global_size},
    )
    return dm, task


def dinov2_step(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of DINOv2Task steps through a real Trainer."""
    dm, task = task_and_data(args, max(64, args.batch * 4))
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        max_steps=args.warmup + args.steps,
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, dm)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - timer.start
    return {
        "images_per_s": timer.steps * args.batch / elapsed,
        "peak_mb": peak_memory_mb(args.device),
    }


def plain_step(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of a plain timm forward/backward/AdamW step on one global crop per image."""
    from geodino.models import build_backbone

    device = torch.device(args.device)
    model = build_backbone(args.model, args.bands, img_size=args.global_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.bands, args.global_size, args.global_size, device=device)
    dtype = torch.bfloat16 if "bf16" in args.precision else None
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.forward_features(x)[:, 0].float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "images_per_s": args.steps * args.batch / (time.perf_counter() - start),
        "peak_mb": peak_memory_mb(args.device),
    }


# --- side by side with the official step ---------------------------------------------------

#: timm names of the architectures, and the official ones of the same shape.
ARCHITECTURES = {
    "vit_small_patch14_reg4_dinov2": "vit_small",
    "vit_base_patch14_reg4_dinov2": "vit_base",
}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


class PhaseClock:
    """Accumulates the seconds spent in named phases (device synchronised on CUDA).

    Args:
        device: the device the step runs on.
        enabled: time phases; on CUDA each phase edge synchronises the device, which slows
            the step, so GPU runs time phases only on request (``--cuda-phases``).
    """

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled
        self.totals: dict[str, float] = {}
        self.open: dict[str, float] = {}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, name: str) -> None:
        if self.enabled and name not in self.open:
            self.open[name] = self.now()

    def stop(self, name: str) -> None:
        if self.enabled and name in self.open:
            self.totals[name] = self.totals.get(name, 0.0) + self.now() - self.open.pop(name)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.start(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop(name)

        return timed

    def watch_backbone(self, backbone: nn.Module) -> None:
        """Time backbone passes: from the patch embedding's input to the final norm's output."""
        backbone.patch_embed.register_forward_pre_hook(lambda *_: self.start("forwards"))
        backbone.norm.register_forward_hook(lambda *_: self.stop("forwards"))

    def reset(self) -> None:
        self.totals = {}


def step_flops(args: argparse.Namespace, n_masked: float) -> float:
    """Matmul FLOPs of one step: student forward + backward (3x), teacher forward (1x)."""
    dim, depth = (768, 12) if "base" in args.model else (384, 12)
    grid_g, grid_l = (args.global_size // 14) ** 2, (args.local_size // 14) ** 2

    def vit(tokens: int) -> float:  # per image: linear layers + attention
        return depth * tokens * (24 * dim * dim + 4 * tokens * dim)

    b = args.batch
    student = 2 * b * vit(grid_g + 5) + args.local_crops * b * vit(grid_l + 5)
    teacher = 2 * b * vit(grid_g + 5)
    head = 2 * (dim * 2048 + 2048 * 2048 + 2048 * 256 + 256 * args.head_out_dim)
    student += head * ((2 + args.local_crops) * b + n_masked)
    teacher += head * (2 * b + n_masked)
    return 3 * student + teacher


def side_result(
    args: argparse.Namespace, clock: PhaseClock, seconds: float, n_masked: float, side: str
) -> dict[str, Any]:
    """Images/s, memory, per-step phases (ms) and, on CUDA, tokens/s and MFU of a run."""
    steps = args.steps
    phases = {k: 1000 * v / steps for k, v in clock.totals.items()}
    step_ms = 1000 * seconds / steps
    if not clock.enabled:
        phases = {}
    else:
        phases["heads+losses"] = phases.pop("loss_step", 0.0) - phases.get("forwards", 0.0)
        phases["optimiser"] = step_ms - sum(
            phases.get(k, 0.0) for k in ("forwards", "heads+losses", "backward", "multi-crop")
        )
    out: dict[str, Any] = {
        "side": side,
        "images_per_s": steps * args.batch / seconds,
        "step_ms": step_ms,
        "peak_mb": peak_memory_mb(args.device),
        "phases_ms": phases,
        "masked_patches": n_masked,
    }
    if args.device.startswith("cuda"):
        tokens = 2 * (args.global_size // 14) ** 2 + args.local_crops * (args.local_size // 14) ** 2
        tokens = args.batch * (
            tokens + 5 * (2 + args.local_crops) + 2 * ((args.global_size // 14) ** 2 + 5)
        )
        out["tokens_per_s"] = tokens * args.batch / seconds / args.batch
        peak = args.peak_tflops or next(
            (v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None
        )
        flops = step_flops(args, n_masked) / (seconds / steps)
        out["tflops"] = flops / 1e12
        out["mfu"] = flops / (peak * 1e12) if peak and "bf16" in args.precision else None
        out["device_name"] = torch.cuda.get_device_name()
    return out


def geodino_side(args: argparse.Namespace) -> dict[str, Any]:
    """DINOv2Task steps through a real Trainer, with the phases timed."""
    device = torch.device(args.device)
    clock = PhaseClock(device, device.type != "cuda" or args.cuda_phases)
    dm, task = task_and_data(args, max(16, args.batch * (args.warmup + args.steps)))
    _watch(task, clock)
    # instance attributes shadow the methods that the trainer calls
    dm.on_after_batch_transfer = clock.wrap(  # type: ignore[method-assign]
        "multi-crop", dm.on_after_batch_transfer
    )
    task._losses = clock.wrap("loss_step", task._losses)  # type: ignore[method-assign]
    task.backward = clock.wrap("backward", task.backward)  # type: ignore[method-assign]
    masked: list[float] = []
    draw_masks = task._masks

    def recorded_masks(*a: Any, **k: Any) -> torch.Tensor:
        out = draw_masks(*a, **k)
        masked.append(float(out.sum()))
        return out

    task._masks = recorded_masks  # type: ignore[method-assign]
    turns = Turns(clock, args.lockstep)
    timer = SideTimer(args.warmup, args.warmup + args.steps, turns)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            max_steps=args.warmup + args.steps,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=folder,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(task, dm)
    seconds = turns.seconds
    n_masked = statistics.mean(masked[args.warmup :]) if masked else 0.0
    return side_result(args, clock, seconds, n_masked, "geodino")


def _watch(task: Any, clock: PhaseClock) -> None:
    for branch in (task.student, task.teacher):
        clock.watch_backbone(branch["backbone"])


class Turns:
    """A side's timed steps, each one started by the parent process (``--lockstep``).

    The parent lets the two sides take turns step by step, so that load from other processes
    falls on both alike; the time of a step runs from its "go" to its end. Without lockstep
    the steps run back to back.
    """

    def __init__(self, clock: PhaseClock, lockstep: bool) -> None:
        self.clock = clock
        self.lockstep = lockstep
        self.seconds = 0.0
        self.started = 0.0

    def begin(self) -> None:
        """Warm-up done: clear the phases and wait for the first turn."""
        self.clock.reset()
        self._wait("ready")

    def step_done(self, last: bool) -> None:
        """A timed step ended: count it, then wait for the next turn."""
        self.seconds += self.clock.now() - self.started
        if not last:
            self._wait("done")
        elif self.lockstep:
            print("@@done", flush=True)

    def _wait(self, message: str) -> None:
        if self.lockstep:
            print(f"@@{message}", flush=True)
            if sys.stdin.readline().strip() != "go":
                sys.exit("the parent process ended the run")
        self.started = self.clock.now()


class SideTimer(Callback):
    """Starts the turns after the warm-up steps and ends one at each timed step's end."""

    def __init__(self, warmup: int, last: int, turns: Turns) -> None:
        self.warmup = warmup
        self.last = last
        self.turns = turns

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.turns.begin()
        elif trainer.global_step > self.warmup:
            self.turns.step_done(trainer.global_step == self.last)


def official_batches(args: argparse.Namespace, official: dict[str, Any], n: int) -> list[dict]:
    """Batches as the official loader collates them: crops, block masks, their upper bound."""
    generator = official["MaskingGenerator"](
        input_size=(args.global_size // 14, args.global_size // 14),
        max_num_patches=0.5 * (args.global_size // 14) ** 2,
    )
    batches = []
    for _ in range(n):
        samples = [
            (
                {
                    "global_crops": [
                        torch.randn(args.bands, args.global_size, args.global_size)
                        for _ in range(2)
                    ],
                    "local_crops": [
                        torch.randn(args.bands, args.local_size, args.local_size)
                        for _ in range(args.local_crops)
                    ],
                },
                (),
            )
            for _ in range(args.batch)
        ]
        batches.append(
            official["collate"](
                samples,
                mask_ratio_tuple=(0.1, 0.5),
                mask_probability=0.5,
                dtype=torch.float32,
                n_tokens=(args.global_size // 14) ** 2,
                mask_generator=generator,
            )
        )
    return batches


def official_side(args: argparse.Namespace) -> dict[str, Any]:
    """The official SSLMetaArch step with the official loop's clipping, AdamW and EMA."""
    import random

    import numpy as np
    from official_dinov2 import import_official, keep_cuda_calls_on_the_cpu, single_process_group

    device = torch.device(args.device)
    official = import_official(args.official, stand_in=None if device.type == "cuda" else True)
    single_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type != "cuda":
        keep_cuda_calls_on_the_cpu()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cfg = official["get_cfg"](
        student={
            "arch": ARCHITECTURES[args.model],
            "patch_size": 14,
            "num_register_tokens": 4,
            "drop_path_rate": 0.0,
            "layerscale": 1e-5,
            "interpolate_antialias": True,
            "interpolate_offset": 0.0,
        },
        crops={
            "global_crops_size": args.global_size,
            "local_crops_size": args.local_size,
            "local_crops_number": args.local_crops,
        },
        train={"centering": "sinkhorn_knopp"},
        compute_precision={"grad_scaler": False},
        dino={"head_n_prototypes": args.head_out_dim},
        ibot={"head_n_prototypes": args.head_out_dim},
    )
    model = official["SSLMetaArch"](cfg)
    for branch in (model.student, model.teacher):  # 13 bands, as geodino's side
        proj = branch.backbone.patch_embed.proj
        branch.backbone.patch_embed.proj = nn.Conv2d(args.bands, proj.out_channels, 14, 14)
    for key in model.student:
        model.teacher[key].load_state_dict(model.student[key].state_dict())
    model.to(device)
    model.train()
    if device.type != "cuda":
        model.need_to_synchronize_fsdp_streams = False
    optimizer = torch.optim.AdamW(model.get_params_groups(), betas=(0.9, 0.999))
    for group in optimizer.param_groups:  # a constant schedule point of the recipe
        group["weight_decay"] = 0.04 * group["wd_multiplier"]
        group["lr"] = 1e-4 * group["lr_multiplier"]
    student = list(model.student.parameters())
    teacher = list(model.teacher.parameters())
    clock = PhaseClock(device, device.type != "cuda" or args.cuda_phases)
    for branch in (model.student, model.teacher):
        clock.watch_backbone(branch.backbone)
    model.backprop_loss = clock.wrap("backward", model.backprop_loss)
    dtype = torch.bfloat16 if "bf16" in args.precision else None
    batches = official_batches(args, official, args.warmup + args.steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(data: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            clock.start("loss_step")
            loss_dict = model.forward_backward(data, teacher_temp=0.07)
        # the official step's clipping, AdamW step and EMA update (its update_teacher
        # gathers FSDP shards; unsharded, it is this foreach update)
        for module in model.student.values():
            nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(teacher, 0.994)
            torch._foreach_add_(teacher, student, alpha=0.006)
        {k: v.item() for k, v in loss_dict.items()}  # the official loop logs every step

    backprop = model.backprop_loss

    def backprop_and_close(loss: torch.Tensor) -> None:
        clock.stop("loss_step")  # the forward part ends where the backward pass starts
        backprop(loss)

    model.backprop_loss = backprop_and_close
    for data in batches[: args.warmup]:
        step(data)
    turns = Turns(clock, args.lockstep)
    turns.begin()
    for i, data in enumerate(batches[args.warmup :]):
        step(data)
        turns.step_done(i == args.steps - 1)
    seconds = turns.seconds
    n_masked = statistics.mean(
        float(b["mask_indices_list"].shape[0]) for b in batches[args.warmup :]
    )
    result = side_result(args, clock, seconds, n_masked, "official")
    result["xformers"] = official["xformers"]
    return result


def side_command(
    args: argparse.Namespace, side: str, batch: int, precision: str, out: Path
) -> list[str]:
    """The command line of one side's process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--lockstep"]
    command += ["--official", str(args.official), "--batch", str(batch)]
    command += ["--precision", precision, "--json", str(out)]
    for name in ("model", "bands", "chip", "global_size", "local_size", "local_crops"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    command += ["--head-out-dim", str(args.head_out_dim), "--device", args.device]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--threads", str(args.threads)]
    command += ["--cuda-phases"] if args.cuda_phases else []
    command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    if not args.device.startswith("cuda"):
        command = ["taskset", "-c", args.core, *command]
    return command


def run_pair(
    args: argparse.Namespace, batch: int, precision: str, first: str
) -> dict[str, dict[str, Any]]:
    """Both sides, each in its own process, taking turns step by step; their results.

    ``first`` takes the first timed step; the order flips at every step.
    """
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        procs: dict[str, subprocess.Popen[str]] = {}
        logs = {}
        for side in ("geodino", "official"):
            logs[side] = open(Path(folder) / f"{side}.log", "w")  # noqa: SIM115
            procs[side] = subprocess.Popen(
                side_command(args, side, batch, precision, Path(folder) / f"{side}.json"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[side],
                text=True,
                env=env,
            )

        def wait(side: str, message: str) -> None:
            proc = procs[side]
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == f"@@{message}":
                    return
            proc.wait()
            logs[side].flush()
            log = (Path(folder) / f"{side}.log").read_text()[-3000:]
            for other in procs.values():
                other.kill()
            sys.exit(f"{side} side failed:\n{log}")

        def go(side: str) -> None:
            stdin = procs[side].stdin
            assert stdin is not None
            stdin.write("go\n")
            stdin.flush()

        for side in procs:
            wait(side, "ready")
        order = [first, "official" if first == "geodino" else "geodino"]
        for _ in range(args.steps):
            for side in order:
                go(side)
                wait(side, "done")
            order.reverse()
        results = {}
        for side, proc in procs.items():
            if proc.wait():
                sys.exit(
                    f"{side} side failed:\n{(Path(folder) / f'{side}.log').read_text()[-3000:]}"
                )
            logs[side].close()
            results[side] = json.loads((Path(folder) / f"{side}.json").read_text())
        return results


def side_by_side(args: argparse.Namespace) -> None:
    """Alternate the two sides over rounds, precisions and batch sizes; print the tables.

    With ``--json`` the results so far are written after every pair, so that a run stopped
    early still leaves its finished rounds (``--report`` prints their tables).
    """
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for i, (precision, batch) in enumerate(
            (p, b) for p in args.precisions for b in args.batches
        ):
            first = "geodino" if (round_ + i) % 2 == 0 else "official"
            pair = run_pair(args, batch, precision, first)
            for side in ("geodino", "official"):
                result = pair[side]
                result.update(round=round_, batch=batch, precision=precision)
                results.append(result)
                print(
                    f"round {round_ + 1} {precision} batch {batch} {side}: "
                    f"{result['images_per_s']:.3f} img/s, peak {result['peak_mb']:.0f} MB",
                    flush=True,
                )
            if args.json:
                args.json.write_text(
                    json.dumps(
                        {"results": results, "args": {k: str(v) for k, v in vars(args).items()}},
                        indent=1,
                    )
                )
    print_side_by_side(args, results)


def report(path: Path) -> None:
    """Print the tables of a saved side-by-side run (complete or stopped early)."""
    saved = json.loads(path.read_text())
    results = saved["results"]
    args = argparse.Namespace(**saved["args"])
    args.batches = sorted({r["batch"] for r in results})
    args.precisions = sorted({r["precision"] for r in results})
    args.rounds = max(r["round"] for r in results) + 1
    print_side_by_side(args, results)


def print_side_by_side(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """The ratio table (per round and median) and the median phase breakdown."""
    where = f"{args.device}" + ("" if args.device.startswith("cuda") else f", core {args.core}")
    print(
        f"\nside by side: {args.model}, {args.bands} bands, 2x{args.global_size} + "
        f"{args.local_crops}x{args.local_size} crops, {args.head_out_dim} prototypes, {where}, "
        f"{args.threads} thread(s), {args.rounds} round(s) of {args.warmup} warm-up + "
        f"{args.steps} timed steps per side"
    )
    cuda = args.device.startswith("cuda")
    print(
        f"{'precision':<11} {'batch':>5} {'geodino img/s':>13} {'official img/s':>14} "
        f"{'ratio (median)':>14} {'ratios per round':>22} {'geodino MB':>10} {'official MB':>11}"
        + (f" {'geodino tok/s':>13} {'official tok/s':>14} {'MFU g/o':>11}" if cuda else "")
    )
    phase_rows = []
    for precision in args.precisions:
        for batch in args.batches:
            rows = [r for r in results if r["precision"] == precision and r["batch"] == batch]
            if not rows:
                continue
            g = [r for r in rows if r["side"] == "geodino"]
            o = [r for r in rows if r["side"] == "official"]
            ratios = [a["images_per_s"] / b["images_per_s"] for a, b in zip(g, o, strict=True)]

            def med(side: list[dict[str, Any]], key: str) -> float:
                return statistics.median(r[key] for r in side)

            line = (
                f"{precision:<11} {batch:>5} {med(g, 'images_per_s'):>13.3f} "
                f"{med(o, 'images_per_s'):>14.3f} {statistics.median(ratios):>13.2f}x "
                f"{' '.join(f'{x:.2f}' for x in ratios):>22} {max(r['peak_mb'] for r in g):>10.0f} "
                f"{max(r['peak_mb'] for r in o):>11.0f}"
            )
            if cuda:
                mfu = [
                    med(s, "mfu") if s[0].get("mfu") is not None else float("nan") for s in (g, o)
                ]
                line += (
                    f" {med(g, 'tokens_per_s'):>13.0f} {med(o, 'tokens_per_s'):>14.0f} "
                    f"{mfu[0]:>5.1%}/{mfu[1]:.1%}"
                )
            print(line)
            for side_name, side in (("geodino", g), ("official", o)):
                if not side[0]["phases_ms"]:
                    continue
                phases = {
                    k: statistics.median(r["phases_ms"].get(k, 0.0) for r in side)
                    for k in ("forwards", "heads+losses", "backward", "optimiser", "multi-crop")
                }
                phases["step"] = statistics.median(r["step_ms"] for r in side)
                phase_rows.append((precision, batch, side_name, phases))
    print("\nphases per step, ms (median over rounds)")
    names = ("forwards", "heads+losses", "backward", "optimiser", "multi-crop", "step")
    print(f"{'precision':<11} {'batch':>5} {'side':<9} " + " ".join(f"{n:>12}" for n in names))
    for precision, batch, side_name, phases in phase_rows:
        print(
            f"{precision:<11} {batch:>5} {side_name:<9} "
            + " ".join(f"{phases[n]:>12.0f}" for n in names)
        )
    for precision, batch, side_name, phases in phase_rows:
        if side_name == "geodino" and phases["step"]:
            share = phases["multi-crop"] / phases["step"]
            print(f"multi-crop share of geodino's step, {precision} batch {batch}: {share:.1%}")
    print(
        "heads+losses: the loss step's forward part minus the backbone passes (heads, centring, "
        "Sinkhorn-Knopp, losses); optimiser: the rest of the step (clipping, AdamW, EMA, the "
        "loop's own work); multi-crop: geodino's on-device crops (the official side's batches "
        "are collated beforehand)"
    )


def main() -> None:
    """Run the chosen mode and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch14_reg4_dinov2")
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chip", type=int, default=256)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--head-out-dim", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--json", type=Path, default=None)
    side = parser.add_argument_group("side by side with the official step")
    side.add_argument(
        "--official", type=Path, default=None, help="facebookresearch/dinov2 checkout"
    )
    side.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    side.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    side.add_argument("--rounds", type=int, default=3)
    side.add_argument("--core", default="0", help="CPU core(s) for taskset (CPU only)")
    side.add_argument("--threads", type=int, default=1, help="torch threads per side (CPU)")
    side.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: by GPU)")
    side.add_argument(
        "--cuda-phases", action="store_true", help="time phases on CUDA (syncs: slower steps)"
    )
    side.add_argument("--report", type=Path, default=None, help="print a saved run's tables")
    side.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    side.add_argument("--side", choices=["geodino", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    if args.side:
        if not args.device.startswith("cuda"):
            torch.set_num_threads(args.threads)
        result = geodino_side(args) if args.side == "geodino" else official_side(args)
        result["args"] = {k: str(v) for k, v in vars(args).items()}
        assert args.json is not None
        args.json.write_text(json.dumps(result))
        return
    if args.official:
        if args.model not in ARCHITECTURES:
            sys.exit(f"--official compares {', '.join(ARCHITECTURES)}; got {args.model}")
        side_by_side(args)
        return
    plain = plain_step(args)
    dino = dinov2_step(args)
    print(
        f"train step: {args.model}, {args.bands} bands, batch {args.batch}, {args.device}, "
        f"{args.precision}, crops 2x{args.global_size} + {args.local_crops}x{args.local_size}"
    )
    print(f"{'step':<28} {'images/s':>9} {'peak MB':>9}")
    print(f"{'plain timm (1 crop)':<28} {plain['images_per_s']:>9.2f} {plain['peak_mb']:>9.0f}")
    print(f"{'DINOv2Task (multi-crop)':<28} {dino['images_per_s']:>9.2f} {dino['peak_mb']:>9.0f}")
    print(f"ratio DINOv2Task / plain: {dino['images_per_s'] / plain['images_per_s']:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plain": plain,
                    "dinov2": dino,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
