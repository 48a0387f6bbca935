"""Pick the torch device (Apple MPS > CUDA > CPU) and the compute dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

from messai.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("float32", "bfloat16", "float16")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """``auto`` prefers MPS, then CUDA, then CPU; a named device that is absent is an error."""
    import torch

    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if _mps_available():
            return torch.device("mps")
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "--device cuda: no CUDA device is available on this machine (try --device cpu)"
        )
    if name == "mps" and not _mps_available():
        raise DeviceError(
            "--device mps: Apple MPS is not available on this machine (try --device cpu)"
        )
    return torch.device(name)


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """float32 everywhere; bfloat16 everywhere torch supports it; float16 only on GPU/MPS."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type == "cpu":
        raise DeviceError(
            "--precision float16 needs a GPU or MPS device; on CPU use float32 or bfloat16"
        )
    return getattr(torch, precision)


def default_batch_size(device: torch.device) -> int:
    """Windows per forward: CPU gains nothing from big batches; GPUs need them."""
    return {"cpu": 2, "mps": 8, "cuda": 16}.get(device.type, 2)
