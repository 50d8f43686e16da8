"""Reading weight and checkpoint files without running code they may hold.

This module knows torch's and safetensors' file formats and nothing of Lightning, so that the
models (which read initial weights) and the checkpointing callbacks share one reader.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geodino.errors import WeightsError


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint or weights file without running any code it may hold.

    Args:
        path: the file.
        map_location: where to put the tensors.

    Returns:
        the loaded object (a dict for checkpoints).

    Raises:
        WeightsError: if the file is missing, truncated, or would run code when unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise WeightsError(
            f"checkpoint {path} is empty (0 bytes): it was cut off while being written; "
            "resume from an earlier checkpoint."
        )
    try:
        loaded: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise WeightsError(
                f"{path} holds pickled Python objects that would run code when loaded; "
                "geodino refuses such files. Re-save the weights as a plain state dict "
                "(tensors only) or as safetensors."
            ) from None
        raise WeightsError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {text.splitlines()[0]}); "
            "it is truncated or not a torch checkpoint. Resume from an earlier checkpoint."
        ) from None
    return loaded


def read_weights(path: Path) -> Mapping[str, Any]:
    """The mapping a weights file holds: safetensors tensors, or a torch checkpoint's dict.

    Args:
        path: a ``.safetensors`` file or a torch file (state dict or checkpoint).

    Returns:
        the file's top-level mapping.

    Raises:
        WeightsError: if the file is missing, damaged, would run code, or holds no mapping.
    """
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path.")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj: object = load_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint; save the "
            "weights with torch.save(model.state_dict(), path)."
        )
    return obj


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file.

    Args:
        path: the file.

    Returns:
        its tensors by name.

    Raises:
        WeightsError: if the file is truncated or damaged.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); "
            "it is truncated or damaged: copy or export it again."
        ) from None
