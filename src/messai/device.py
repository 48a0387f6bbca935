"""Pick the torch device (Apple MPS > CUDA > CPU) and the compute dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

from messai.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("float32", "bfloat16", "float16", "int8")

#: What each precision is, as the CLI and the benchmarks label it. int8 and bfloat16 are
#: approximations of float32; their measured fidelity (per-layer cosine of window vectors,
#: top-10 overlap of recommendation lists) is in the README and in ``mess benchmark extract``.
PRECISION_LABELS = {
    "float32": "exact (reference)",
    "bfloat16": "approximate: bfloat16 weights and activations",
    "float16": "approximate: float16 weights and activations (GPU/MPS only)",
    "int8": "approximate: dynamic int8 quantisation of the linear layers (CPU only)",
}


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
    """float32 everywhere; bfloat16 everywhere torch supports it; float16 only on GPU/MPS;
    int8 (dynamic quantisation of the linear layers, computed around float32) on CPU only."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float16" and device.type == "cpu":
        raise DeviceError(
            "--precision float16 needs a GPU or MPS device; on CPU use float32 or bfloat16"
        )
    if precision == "int8":
        if device.type != "cpu":
            raise DeviceError(
                "--precision int8 (dynamic quantisation) runs on CPU only; on a GPU use float16 "
                "or bfloat16"
            )
        return torch.float32
    return getattr(torch, precision)


#: Rough device memory of one 5-s window in the forward of the 95M shape at 2 bytes per value
#: (CNN feature maps dominate: 512 channels x 24000 frames after the first conv), with margin.
_BYTES_PER_WINDOW_SECOND_PER_HIDDEN = 24_000


def default_batch_size(
    device: torch.device,
    *,
    window_seconds: float = 5.0,
    hidden_size: int = 768,
    dtype_bytes: int = 4,
) -> int:
    """Windows per forward: CPU gains nothing from big batches (2); MPS 8; CUDA from the free
    device memory (half of it, at a conservative estimate per window; 16 if it cannot be read),
    between 1 and 64."""
    if device.type != "cuda":
        return {"cpu": 2, "mps": 8}.get(device.type, 2)
    import torch

    try:
        free, _total = torch.cuda.mem_get_info(device)
    except Exception:  # pragma: no cover - needs CUDA
        return 16
    per_window = (
        _BYTES_PER_WINDOW_SECOND_PER_HIDDEN * window_seconds * hidden_size * dtype_bytes / 2
    )
    return int(max(1, min(64, (free // 2) // max(per_window, 1))))
