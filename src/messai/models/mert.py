"""Load MERT checkpoints natively into transformers' ``HubertModel`` (no remote code).

MERT-v1 (``m-a-p/MERT-v1-95M``, ``m-a-p/MERT-v1-330M``) ships remote code: ``MERTModel``, a
HuBERT subclass. With the CQT branch and deepnorm off, as in both released v1 models, its
forward is exactly ``HubertModel``'s with the same module names and weights, so we read the
hub's ``config.json``, drop the MERT-only keys, refuse configs that turn CQT or deepnorm on,
and load the weights ourselves (safetensors, or the pickle through ``weights_only=True``).

Hub layout of a checkpoint directory: ``config.json`` (``model_type: mert_model``),
``preprocessor_config.json``, ``pytorch_model.bin`` and/or ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from messai.errors import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MERT_ONLY_KEYS = (
    "model_type",
    "auto_map",
    "architectures",
    "attention_relax",
    "deepnorm",
    "feature_extractor_cqt",
    "feature_extractor_cqt_bins",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_G, _V = "encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.weight_v"
_P0 = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
_P1 = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


@dataclass
class MertCheckpoint:
    """A resolved checkpoint directory and what it says about itself."""

    model_id: str  # the hub id, or the directory as given
    directory: Path
    revision: str  # hub commit, or "local"
    config: dict[str, Any]  # config.json as stored
    preprocessor: dict[str, Any]
    weights_file: Path
    family = "mert"  # a class attribute: the model family (messai.models)

    @property
    def sample_rate(self) -> int:
        return int(
            self.preprocessor.get("sampling_rate") or self.config.get("sample_rate") or 24000
        )

    @property
    def do_normalize(self) -> bool:
        """The preprocessor's ``do_normalize``; true when absent (as MARBLE v2 uses MERT)."""
        value = self.preprocessor.get("do_normalize")
        return True if value is None else bool(value)

    @property
    def n_layers(self) -> int:
        """Hidden states per forward: transformer layers + 1 (the CNN/positional input)."""
        return int(self.config.get("num_hidden_layers", 12)) + 1

    @property
    def receptive_field(self) -> int:
        """Samples the CNN front end needs for one output frame (400 for MERT-v1)."""
        rf, jump = 1, 1
        for k, st in zip(
            self.config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
            self.config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]),
        ):
            rf += (k - 1) * jump
            jump *= st
        return rf

    @property
    def dim(self) -> int:
        return int(self.config.get("hidden_size", 768))

    @property
    def config_hash(self) -> str:
        blob = json.dumps([self.config, self.preprocessor], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a feature store records about the model that made it."""
        ident = {
            "id": self.model_id,
            "revision": self.revision,
            "config_hash": self.config_hash,
            "sample_rate": self.sample_rate,
            "n_layers": self.n_layers,
            "dim": self.dim,
            "do_normalize": self.do_normalize,
            "stable_layer_norm": bool(self.config.get("do_stable_layer_norm", False)),
        }
        if self.revision == "local":
            ident["weights_sha256"] = _file_sha256(self.weights_file)
        return ident


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def _download(model_id: str, revision: str | None) -> tuple[Path, str]:
    """Hub id → local snapshot in the standard HF cache (HF_HOME, HF_HUB_OFFLINE respected)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - dependency
        raise ModelError(f"huggingface_hub is required to fetch {model_id}: {exc}") from None
    patterns = ["config.json", "preprocessor_config.json", *WEIGHT_FILES]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        path = snapshot_download(
            model_id, revision=revision, allow_patterns=patterns, local_files_only=True
        )
    except Exception:
        if offline:
            raise ModelError(
                f"model {model_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it once online, or pass --model DIR (a local checkpoint, e.g. from 'mess model random')"
            ) from None
        try:
            path = snapshot_download(model_id, revision=revision, allow_patterns=patterns)
        except Exception as exc:
            raise ModelError(
                f"model {model_id} is not in the Hugging Face cache and cannot be downloaded "
                f"({type(exc).__name__}); connect once to fetch it, or pass --model DIR "
                "(a local checkpoint, e.g. from 'mess model random')"
            ) from None
    path = Path(path)
    return path, path.name  # snapshot folders are named by commit hash


def resolve_checkpoint(model: str | os.PathLike, *, revision: str | None = None) -> MertCheckpoint:
    """A local checkpoint directory, or a hub id fetched into the HF cache."""
    text = str(model)
    local = Path(text).expanduser()
    if local.is_dir():
        directory, rev, model_id = local.resolve(), "local", str(local.resolve())
    elif _HUB_ID.match(text) and not local.exists():
        directory, rev = _download(text, revision)
        model_id = text
    else:
        raise ModelError(
            f"{text}: not a checkpoint directory (no such folder) and not a hub id like 'm-a-p/MERT-v1-95M'"
        )
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelError(
            f"{directory}: no config.json (expected the hub layout: config.json, weights, preprocessor_config.json)"
        )
    config = _read_json(cfg_path)
    pre_path = directory / "preprocessor_config.json"
    preprocessor = _read_json(pre_path) if pre_path.is_file() else {}
    weights = next((directory / n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if weights is None:
        raise ModelError(f"{directory}: no weights (expected {' or '.join(WEIGHT_FILES)})")
    _check_supported(config, cfg_path)
    return MertCheckpoint(model_id, directory, rev, config, preprocessor, weights)


def _check_supported(config: dict[str, Any], where: Path) -> None:
    mtype = config.get("model_type")
    if mtype not in ("mert_model", "hubert"):
        raise ModelError(
            f"{where}: model_type {mtype!r} is not a MERT checkpoint (expected 'mert_model')"
        )
    if config.get("feature_extractor_cqt"):
        raise ModelError(
            f"{where}: feature_extractor_cqt is on; the CQT branch exists only in MERT's remote code, "
            "which mess never runs (released MERT-v1 models have it off)"
        )
    if config.get("deepnorm"):
        raise ModelError(
            f"{where}: deepnorm is on; its residual scaling differs from HubertModel, so native "
            "loading would compute something else (released MERT-v1 models have it off)"
        )


def hubert_config(checkpoint: MertCheckpoint):
    """``HubertConfig`` equivalent to the MERT config (MERT-only keys dropped)."""
    from transformers import HubertConfig

    kwargs = {k: v for k, v in checkpoint.config.items() if k not in MERT_ONLY_KEYS}
    cfg = HubertConfig(**kwargs)
    # transformers 5 records hidden_states[-1] of a stable-layer-norm encoder *before* its final
    # layer norm; MERT's own code records it after. Tie it to last_hidden_state, as MERT does.
    cfg.tie_last_hidden_states = True
    cfg.layerdrop = 0.0
    return cfg


def read_state_dict(weights_file: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or from the pickle with ``weights_only=True`` (no code runs)."""
    import torch

    try:
        if weights_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights_file))
        else:
            state = torch.load(str(weights_file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{weights_file}: cannot read weights ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{weights_file}: expected a state dict of tensors")
    return state


def to_native_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hub key names → ``HubertModel`` names: strip a ``hubert.``/``mert.`` prefix and map the
    positional conv's ``weight_g``/``weight_v`` onto torch's weight-norm parametrisation."""
    out = {}
    for key, value in state.items():
        for prefix in ("hubert.", "mert.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        key = {_G: _P0, _V: _P1}.get(key, key)
        out[key] = value
    return out


def to_hub_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``HubertModel`` names → the hub's (``weight_g``/``weight_v``), contiguous tensors."""
    return {{_P0: _G, _P1: _V}.get(k, k): v.detach().contiguous() for k, v in state.items()}


def fuse_weight_norm(model) -> None:
    """Fold the positional conv's weight norm into a plain weight (MPS lacks the op in some
    torch versions, and it is ~40% faster everywhere)."""
    import torch

    conv = model.encoder.pos_conv_embed.conv
    if hasattr(conv, "parametrizations") and "weight" in conv.parametrizations:
        torch.nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    elif hasattr(conv, "weight_g"):
        torch.nn.utils.remove_weight_norm(conv)


@dataclass
class LoadedMert:
    """A ready-to-run model: ``HubertModel`` in eval mode on ``device`` in ``dtype``."""

    checkpoint: MertCheckpoint
    model: Any
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)


def load_mert(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    device="cpu",
    dtype=None,
    quantize: str | None = None,
) -> LoadedMert:
    """Resolve, build ``HubertModel`` from the MERT config, load weights strictly, fuse weight norm.

    ``quantize="int8"`` replaces every ``nn.Linear`` by torch's dynamically quantised int8
    linear (weights int8 per tensor, activations quantised per batch; CPU only): about 2x
    faster on this project's CPU, approximate (see ``mess benchmark extract --precision``)."""
    import torch
    from transformers import HubertModel

    checkpoint = (
        model if isinstance(model, MertCheckpoint) else resolve_checkpoint(model, revision=revision)
    )
    cfg = hubert_config(checkpoint)
    state = to_native_keys(read_state_dict(checkpoint.weights_file))
    net = HubertModel(cfg)
    expected = set(net.state_dict())
    missing = sorted(expected - set(state) - {"masked_spec_embed"})
    if missing:
        raise ModelError(
            f"{checkpoint.weights_file}: weights do not match the config: missing {len(missing)} tensors "
            f"(first: {', '.join(missing[:3])})"
        )
    unexpected = sorted(set(state) - expected)
    if unexpected:
        log.info(
            "ignoring %d tensors not used by the encoder (e.g. %s)", len(unexpected), unexpected[:3]
        )
    try:
        net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as exc:
        raise ModelError(
            f"{checkpoint.weights_file}: weights do not match the config: {str(exc)[:300]}"
        ) from None
    fuse_weight_norm(net)
    net.eval()
    dtype = dtype or torch.float32
    device = torch.device(device)
    net.to(device=device, dtype=dtype)
    info: dict[str, Any] = {}
    if quantize is not None:
        net = quantize_linear(net, quantize)
        info["quantized"] = quantize
    return LoadedMert(checkpoint, net, device, dtype, info)


def quantize_linear(net, mode: str = "int8"):
    """Dynamic int8 quantisation of every ``nn.Linear`` (CPU). Returns the quantised module."""
    import warnings

    import torch

    if mode != "int8":
        raise ModelError(f"unknown quantisation {mode!r}: only 'int8'")
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)


class _NullHubert:
    """Stands in for ``HubertModel`` and returns zeros of the right shapes (benchmarks only)."""

    def __init__(self, checkpoint: MertCheckpoint):
        self.n_states = checkpoint.n_layers
        self.dim = checkpoint.dim
        self.kernels = checkpoint.config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])
        self.strides = checkpoint.config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])

    def __call__(self, x, **_kwargs):
        import types

        import torch

        frames = x.shape[-1]
        for k, s in zip(self.kernels, self.strides):
            frames = (frames - k) // s + 1
        zeros = torch.zeros(x.shape[0], frames, self.dim, dtype=x.dtype, device=x.device)
        return types.SimpleNamespace(hidden_states=(zeros,) * self.n_states)


def null_mert(checkpoint: MertCheckpoint, *, device="cpu") -> LoadedMert:
    """A "model" that returns zero hidden states of MERT's shapes without computing anything:
    timing a pipeline with it measures everything except the forward (``--null-model``)."""
    import torch

    return LoadedMert(
        checkpoint, _NullHubert(checkpoint), torch.device(device), torch.float32, {"null": True}
    )


def pooled_hidden_states(loaded: LoadedMert, windows: torch.Tensor, *, keep_raw: bool = False):
    """Forward a batch of equal-length, already-normalised windows ``[batch, samples]``.

    Returns ``pooled [batch, n_layers, dim]`` float32 (time mean of every hidden state) and,
    with ``keep_raw``, ``raw [batch, n_layers, frames, dim]`` float32.
    """
    import torch

    with torch.inference_mode():
        if loaded.device.type == "cuda":
            # page-locked host memory: the copy runs as DMA, asynchronously to this thread
            x = windows.pin_memory().to(device=loaded.device, non_blocking=True)
            x = x.to(dtype=loaded.dtype)
        else:
            x = windows.to(device=loaded.device, dtype=loaded.dtype)
        out = loaded.model(x, output_hidden_states=True, return_dict=True)
        # mean over time per state: no [B, L, T, D] copy (it cost more than the mean itself)
        pooled = torch.stack([h.float().mean(dim=1) for h in out.hidden_states], dim=1)
        raw = torch.stack(out.hidden_states, dim=1).float().cpu() if keep_raw else None
    return pooled.cpu(), raw


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=[512] * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=[512] * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        attention_relax=32.0,
    ),
}


def mert_config(preset: str = "base", **overrides: Any) -> dict[str, Any]:
    """A MERT-v1 ``config.json`` dict (as on the hub) for a preset shape."""
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg: dict[str, Any] = {
        "model_type": "mert_model",
        "architectures": ["MERTModel"],
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_bias": False,
        "feat_extract_norm": "group",
        "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": True,
        "do_stable_layer_norm": False,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "layerdrop": 0.05,
        "mask_time_prob": 0.05,
        "initializer_range": 0.02,
        "sample_rate": 24000,
        "deepnorm": False,
        "feature_extractor_cqt": False,
        "feature_extractor_cqt_bins": 336,
        "num_feat_extract_layers": 7,
        "vocab_size": 32,
    }
    cfg.update(PRESETS[preset])
    cfg.update(overrides)
    return cfg


def write_random_checkpoint(
    directory: str | os.PathLike,
    *,
    like: str | os.PathLike | None = None,
    preset: str | None = None,
    seed: int = 0,
    weights_format: str = "safetensors",
    revision: str | None = None,
) -> Path:
    """Write a random-weight checkpoint in the hub layout. Its embeddings mean nothing musically:
    it is for smoke tests and for the random-initialisation control of layer probing.

    With ``preset`` torch is seeded with ``seed``; with ``like`` (the twin of a checkpoint) with
    :func:`messai.models.twin_seed` of ``seed`` and the source's weights, so a twin never
    re-draws its source's weights (and one that equals them anyway is refused)."""
    import torch
    from transformers import HubertModel

    from messai.models import refuse_identical, source_fingerprint, twin_seed

    if (like is None) == (preset is None):
        raise ModelError("give exactly one of --like ID|DIR or --preset tiny|base|large")
    if weights_format not in ("safetensors", "bin", "both"):
        raise ModelError(f"unknown weights format {weights_format!r}: safetensors, bin or both")
    if like is not None:
        try:
            source = resolve_checkpoint(like, revision=revision)
        except ModelError as exc:
            if Path(str(like)).expanduser().is_dir():
                raise
            raise ModelError(
                f"--like {like}: its config is not in the Hugging Face cache and cannot be fetched "
                "here; use --preset base (the 95M shape) or --preset large (the 330M shape), "
                "or --like DIR (a local checkpoint)"
            ) from exc
        config = dict(source.config)
        config.pop("mess_random_init", None)
        preprocessor = dict(source.preprocessor) or _default_preprocessor(source.sample_rate)
        torch_seed = twin_seed(seed, source)
        init = {
            "seed": seed,
            "torch_seed": torch_seed,
            "like": str(like),
            "like_weights": source_fingerprint(source),
        }
    else:
        source, torch_seed = None, seed
        init = {"seed": seed, "like": preset}
        config = mert_config(preset)
        preprocessor = _default_preprocessor(24000)
    out = Path(directory).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: folder exists and is not empty; choose a new folder")
    _check_supported(config, out / "config.json")
    torch.manual_seed(torch_seed)
    net = HubertModel(
        hubert_config(MertCheckpoint("random", out, "local", config, preprocessor, out))
    )
    state = to_hub_keys(net.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, "mess_random_init": init}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8"
    )
    if weights_format in ("safetensors", "both"):
        from safetensors.torch import save_file

        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if weights_format in ("bin", "both"):
        torch.save(state, str(out / "pytorch_model.bin"))
    mode = (out / "config.json").stat().st_mode & 0o777  # what the umask gives a new file
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (out / name).exists():
            os.chmod(out / name, mode)  # safetensors writes 0600 whatever the umask
    if source is not None:
        refuse_identical(out, source)
    return out


def _default_preprocessor(sample_rate: int) -> dict[str, Any]:
    return {
        "do_normalize": True,
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "sampling_rate": sample_rate,
    }
