"""Import the official DINOv2 code from a checkout, for the side-by-side benchmarks.

The official code cannot ship with geodino: the benchmarks take a checkout of
facebookresearch/dinov2 (``git clone https://github.com/facebookresearch/dinov2``) and import
it from there. Its training code needs xFormers (``fmha.BlockDiagonalMask``, the packed
attention of its nested blocks) and CUDA; where xFormers is not importable (the CPU, or a
GPU without it), :func:`install_xformers_stand_in` puts a small stand-in under the name
``xformers.ops`` that does the same computation in plain PyTorch: the crops packed into one
sequence per block, attention block-diagonal over them (one ``scaled_dot_product_attention``
per run of equal-length sequences). Its ``cross_entropy`` is left out, so the official iBOT
loss takes its own PyTorch fallback. fvcore, whose checkpointers the official training
package imports but the step never uses, gets empty stand-ins when it is not installed.
Nothing in the official code is patched; its iBOT Sinkhorn-Knopp calls ``dist.all_reduce``
unconditionally, so :func:`single_process_group` starts a one-process gloo group.
"""

import importlib
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class BlockDiagonalMask:
    """The part of xFormers' ``fmha.BlockDiagonalMask`` that DINOv2's training code uses."""

    def __init__(self, seqlens: Sequence[int]) -> None:
        self.seqlens = list(seqlens)
        self._batch_sizes: list[int] | None = None

    @classmethod
    def from_seqlens(cls, seqlens: Sequence[int]) -> "BlockDiagonalMask":
        return cls(seqlens)

    @classmethod
    def from_tensor_list(cls, tensors: Sequence[Tensor]) -> tuple["BlockDiagonalMask", Tensor]:
        seqlens = [x.shape[1] for x in tensors for _ in range(x.shape[0])]
        mask = cls(seqlens)
        mask._batch_sizes = [x.shape[0] for x in tensors]
        packed = torch.cat([x.reshape(1, -1, *x.shape[2:]) for x in tensors], dim=1)
        return mask, packed

    def runs(self) -> list[tuple[int, int, int]]:
        """(start, sequences, length) of each run of equal-length sequences."""
        runs: list[tuple[int, int, int]] = []
        start = 0
        for length in self.seqlens:
            if runs and runs[-1][2] == length:
                s, n, _ = runs[-1]
                runs[-1] = (s, n + 1, length)
            else:
                runs.append((start, 1, length))
            start += length
        return runs

    def split(self, tensor: Tensor) -> list[Tensor]:
        assert self._batch_sizes is not None
        out = []
        start = 0
        seq = 0
        for batch in self._batch_sizes:
            length = self.seqlens[seq]
            stop = start + batch * length
            out.append(tensor[:, start:stop].reshape(batch, length, *tensor.shape[2:]))
            start, seq = stop, seq + batch
        return out


def memory_efficient_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_bias: BlockDiagonalMask | None = None
) -> Tensor:
    """xFormers' layout (B, N, H, d); block-diagonal over the mask's sequences."""
    if attn_bias is None:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2)
    parts = []
    for start, n, length in attn_bias.runs():
        stop = start + n * length

        def run(x: Tensor, start: int = start, stop: int = stop, n: int = n) -> Tensor:
            return x[0, start:stop].reshape(n, -1, *x.shape[2:]).transpose(1, 2)

        out = F.scaled_dot_product_attention(run(q), run(k), run(v))
        parts.append(out.transpose(1, 2).reshape(1, stop - start, *q.shape[2:]))
    return torch.cat(parts, dim=1)


def index_select_cat(sources: Sequence[Tensor], indices: Sequence[Tensor]) -> Tensor:
    return torch.cat([s[i].flatten() for s, i in zip(sources, indices, strict=True)])


def scaled_index_add(
    input: Tensor, index: Tensor, source: Tensor, scaling: Tensor | None = None, alpha: float = 1.0
) -> Tensor:
    source = source * scaling if scaling is not None else source
    return input.index_add(0, index, source, alpha=alpha)


def xformers_available() -> bool:
    """Whether the real xFormers imports."""
    try:
        importlib.import_module("xformers.ops")
    except ImportError:
        return False
    return True


def install_xformers_stand_in() -> None:
    """Register the plain-PyTorch ``xformers.ops`` above (before importing the official code)."""
    package = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.BlockDiagonalMask = BlockDiagonalMask  # type: ignore[attr-defined]
    ops.fmha = fmha  # type: ignore[attr-defined]
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    ops.unbind = torch.unbind  # type: ignore[attr-defined]
    ops.index_select_cat = index_select_cat  # type: ignore[attr-defined]
    ops.scaled_index_add = scaled_index_add  # type: ignore[attr-defined]
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"xformers": package, "xformers.ops": ops, "xformers.ops.fmha": fmha})


def install_fvcore_stand_in() -> None:
    """Register empty checkpointer classes as ``fvcore.common.checkpoint``.

    The official training package imports fvcore's checkpointers at import time; the step
    never uses them.
    """
    names = ("fvcore", "fvcore.common", "fvcore.common.checkpoint")
    modules = {name: types.ModuleType(name) for name in names}
    checkpoint = modules["fvcore.common.checkpoint"]
    checkpoint.Checkpointer = type("Checkpointer", (), {})  # type: ignore[attr-defined]
    checkpoint.PeriodicCheckpointer = type("PeriodicCheckpointer", (), {})  # type: ignore[attr-defined]
    sys.modules.update(modules)


def import_official(checkout: Path, stand_in: bool | None = None) -> dict[str, Any]:
    """The official modules the benchmarks use, imported from ``checkout``.

    Args:
        checkout: root of a facebookresearch/dinov2 checkout (holds ``dinov2/``).
        stand_in: use the xFormers stand-in; None: only where xFormers does not import.

    Returns:
        ``DINOLoss``, ``iBOTPatchLoss``, ``KoLeoLoss``, ``SSLMetaArch``, ``collate``,
        ``MaskingGenerator``, ``get_cfg`` (the default config with the ViT-S/14 recipe)
        and ``xformers`` ("real" or "stand-in").

    Raises:
        SystemExit: if the folder holds no checkout.
    """
    if not (checkout / "dinov2" / "train" / "ssl_meta_arch.py").is_file():
        sys.exit(f"{checkout} is not a checkout of facebookresearch/dinov2 (no dinov2/train)")
    if stand_in is None:
        stand_in = not xformers_available()
    if stand_in:
        install_xformers_stand_in()
    try:
        importlib.import_module("fvcore.common.checkpoint")
    except ImportError:
        install_fvcore_stand_in()
    sys.path.insert(0, str(checkout))
    from dinov2.data.collate import collate_data_and_cast
    from dinov2.data.masking import MaskingGenerator
    from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss
    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from omegaconf import OmegaConf

    default = checkout / "dinov2" / "configs" / "ssl_default_config.yaml"

    def get_cfg(**overrides: Any) -> Any:
        cfg = OmegaConf.load(default)
        return OmegaConf.merge(cfg, OmegaConf.create(overrides))

    return {
        "DINOLoss": DINOLoss,
        "iBOTPatchLoss": iBOTPatchLoss,
        "KoLeoLoss": KoLeoLoss,
        "SSLMetaArch": SSLMetaArch,
        "collate": collate_data_and_cast,
        "MaskingGenerator": MaskingGenerator,
        "get_cfg": get_cfg,
        "xformers": "stand-in" if stand_in else "real",
    }


def keep_cuda_calls_on_the_cpu() -> None:
    """Make ``Tensor.cuda()`` return the tensor itself: the official step moves its batch
    with ``.cuda(non_blocking=True)``, which the CPU runs cannot do (benchmark processes
    only)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]


def single_process_group(backend: str = "gloo") -> None:
    """A one-process group (file store, no network) for the official ``dist.all_reduce``."""
    if not dist.is_initialized():
        store = Path(tempfile.mkdtemp()) / "store"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
