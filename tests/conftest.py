"""Shared fixtures: an isolated MESS_HOME, tiny random MERT checkpoints in the hub layout,
generated audio. Tests never touch the network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# The hub's MERT-v1-95M config.json, shrunk to a tiny shape (same keys, remote-code fields kept).
HUB_LIKE_CONFIG = {
    "_name_or_path": "m-a-p/MERT-v1-95M",
    "activation_dropout": 0.0,
    "apply_spec_augment": True,
    "architectures": ["MERTModel"],
    "attention_dropout": 0.1,
    "auto_map": {
        "AutoConfig": "configuration_MERT.MERTConfig",
        "AutoModel": "modeling_MERT.MERTModel",
    },
    "bos_token_id": 1,
    "classifier_proj_size": 256,
    "conv_bias": False,
    "conv_dim": [16, 16, 16, 16, 16, 16, 16],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "deepnorm": False,
    "do_stable_layer_norm": False,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_norm": "group",
    "feat_proj_dropout": 0.1,
    "feat_proj_layer_norm": True,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "final_dropout": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.05,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "model_type": "mert_model",
    "num_attention_heads": 2,
    "num_conv_pos_embedding_groups": 4,
    "num_conv_pos_embeddings": 16,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "sample_rate": 24000,
    "torch_dtype": "float32",
    "transformers_version": "4.25.1",
    "vocab_size": 32,
}
STABLE_OVERRIDES = {
    "do_stable_layer_norm": True,
    "feat_extract_norm": "layer",
    "attention_relax": 32.0,
    "num_hidden_layers": 3,
    "_name_or_path": "m-a-p/MERT-v1-330M",
}
PREPROCESSOR = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0,
    "return_attention_mask": True,
    "sampling_rate": 24000,
}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("mess_home")
    monkeypatch.setenv("MESS_HOME", str(home))
    monkeypatch.setenv("MESS_CONFIG", str(home / "config.toml"))
    (home / "config.toml").write_text("")  # MESS_CONFIG naming a missing file is an error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for var in (
        "MESS_MODEL",
        "MESS_DEVICE",
        "MESS_PRECISION",
        "MESS_BATCH_SIZE",
        "MESS_STORE_DTYPE",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


def write_checkpoint(
    directory: Path,
    *,
    stable: bool = False,
    weights: str = "bin",
    seed: int = 0,
    do_normalize: bool | None = True,
) -> Path:
    """A tiny random MERT checkpoint exactly in the hub layout (hub key names, weight_g/_v)."""
    import torch
    from transformers import HubertConfig, HubertModel

    config = dict(HUB_LIKE_CONFIG, **(STABLE_OVERRIDES if stable else {}))
    kwargs = {
        k: v
        for k, v in config.items()
        if k
        not in (
            "model_type",
            "auto_map",
            "architectures",
            "attention_relax",
            "deepnorm",
            "feature_extractor_cqt",
            "feature_extractor_cqt_bins",
        )
    }
    torch.manual_seed(seed)
    net = HubertModel(HubertConfig(**kwargs))
    with torch.no_grad():  # make every parameter matter (norm affines, biases) for the comparison
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    state = {}
    for k, v in net.state_dict().items():
        k = k.replace(
            "pos_conv_embed.conv.parametrizations.weight.original0", "pos_conv_embed.conv.weight_g"
        )
        k = k.replace(
            "pos_conv_embed.conv.parametrizations.weight.original1", "pos_conv_embed.conv.weight_v"
        )
        state[k] = v.contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    pre = dict(PREPROCESSOR)
    if do_normalize is None:
        pre.pop("do_normalize")
    else:
        pre["do_normalize"] = do_normalize
    (directory / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    if weights in ("bin", "both"):
        torch.save(state, directory / "pytorch_model.bin")
    if weights in ("safetensors", "both"):
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Post-layer-norm (95M-style) tiny checkpoint, pickled weights with weight_g/weight_v."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-95m", weights="bin")


@pytest.fixture(scope="session")
def tiny_stable_ckpt(tmp_path_factory) -> Path:
    """Stable-layer-norm (330M-style) tiny checkpoint, safetensors weights."""
    return write_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny-330m", stable=True, weights="safetensors"
    )


def tone(
    seconds: float,
    sample_rate: int,
    *,
    freq: float = 440.0,
    channels: int = 1,
    seed: int = 0,
    amplitude: float = 0.3,
) -> np.ndarray:
    """A decaying harmonic tone plus a little noise, ``[frames, channels]`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    x = sum(np.sin(2 * np.pi * freq * h * t) / h for h in (1, 2, 3)) * np.exp(-0.3 * (t % 2.0))
    x = amplitude * x / 1.8 + 0.01 * rng.standard_normal(len(t))
    cols = [np.roll(x, 37 * c) * (1 - 0.1 * c) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_audio(path: Path, seconds: float, sample_rate: int = 24000, **kw) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sample_rate, **kw), sample_rate)
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session."""
    from tests.s3_server import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_stores(s3_endpoint, monkeypatch):
    """A fresh bucket; the AWS variables set; returns the ``s3://bucket/stores`` location."""
    from tests.s3_server import new_bucket, s3_env

    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    return f"s3://{new_bucket(s3_endpoint)}/stores"
