"""Native MERT loading against an independent forward; refusal of unsupported checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from messai.errors import ModelError
from messai.models.mert import (
    load_mert,
    pooled_hidden_states,
    resolve_checkpoint,
    write_random_checkpoint,
)
from tests.conftest import write_checkpoint
from tests.reference_forward import reference_hidden_states


def _windows(n=2, seconds=1.3, seed=0):
    x = torch.from_numpy(
        np.random.default_rng(seed).standard_normal((n, int(seconds * 24000))).astype(np.float32)
    )
    return (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)


@pytest.mark.parametrize("fixture", ["tiny_ckpt", "tiny_stable_ckpt"])
def test_native_forward_matches_independent_reference(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    loaded = load_mert(ckpt)
    x = _windows()
    pooled, raw = pooled_hidden_states(loaded, x, keep_raw=True)
    ref = reference_hidden_states(ckpt, x)
    n_layers = json.loads((ckpt / "config.json").read_text())["num_hidden_layers"] + 1
    assert raw.shape[1] == len(ref) == n_layers
    for layer, r in enumerate(ref):
        np.testing.assert_allclose(
            raw[:, layer].numpy(), r.numpy(), atol=1e-4, rtol=0, err_msg=f"layer {layer}"
        )
        np.testing.assert_allclose(pooled[:, layer].numpy(), r.mean(1).numpy(), atol=1e-4, rtol=0)


def test_stable_last_layer_is_after_final_layer_norm(tiny_stable_ckpt):
    """The 330M pitfall: layer L must be recorded after the encoder's final layer norm."""
    loaded = load_mert(tiny_stable_ckpt)
    _, raw = pooled_hidden_states(loaded, _windows(1), keep_raw=True)
    last = raw[0, -1]
    # after a layer norm with unit-ish affine, each frame has near-zero mean across channels
    w = loaded.model.encoder.layer_norm
    normed = (last - w.bias.detach()) / w.weight.detach()
    assert normed.mean(-1).abs().max() < 1e-3


def test_safetensors_and_bin_give_identical_weights(tmp_path):
    a = write_checkpoint(tmp_path / "a", weights="both")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "model.safetensors").unlink()
    x = _windows(1)
    pa, _ = pooled_hidden_states(load_mert(a), x)
    pb, _ = pooled_hidden_states(load_mert(b), x)
    assert resolve_checkpoint(a).weights_file.name == "model.safetensors"
    assert resolve_checkpoint(b).weights_file.name == "pytorch_model.bin"
    torch.testing.assert_close(pa, pb, atol=0, rtol=0)


def test_weight_norm_is_fused(tiny_ckpt):
    conv = load_mert(tiny_ckpt).model.encoder.pos_conv_embed.conv
    assert not hasattr(conv, "parametrizations") or "weight" not in conv.parametrizations
    assert isinstance(conv.weight, torch.nn.Parameter)


@pytest.mark.parametrize("key,msg", [("feature_extractor_cqt", "CQT"), ("deepnorm", "deepnorm")])
def test_refuses_cqt_and_deepnorm(tmp_path, tiny_ckpt, key, msg):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = True
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=msg):
        load_mert(d)


def test_refuses_other_model_types_and_missing_files(tmp_path, tiny_ckpt):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    with pytest.raises(ModelError, match="not a MERT checkpoint"):
        resolve_checkpoint(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(ModelError, match="no weights"):
        resolve_checkpoint(d)


def test_missing_tensors_are_an_error_not_random_weights(tmp_path, tiny_ckpt):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state.pop("encoder.layers.0.attention.q_proj.weight")
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="missing 1 tensors"):
        load_mert(d)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_run(tmp_path, tiny_ckpt, capsys):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    torch.save({"x": _Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_mert(d)
    assert "pwned" not in capsys.readouterr().out


def test_offline_hub_id_not_cached_is_one_clear_line():
    with pytest.raises(ModelError) as exc:
        resolve_checkpoint("m-a-p/MERT-v1-95M")
    text = str(exc.value)
    assert "\n" not in text and "--model DIR" in text and "m-a-p/MERT-v1-95M" in text


def test_hub_cache_layout_is_used_when_cached(tmp_path, tiny_ckpt):
    """A hub id resolves through huggingface_hub's cache under HF_HOME when the snapshot is there
    (a fresh process: huggingface_hub reads HF_HOME when it is imported)."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "hf" / "hub" / "models--m-a-p--MERT-v1-95M"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "snapshots" / commit
    shutil.copytree(tiny_ckpt, snap)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    code = "from messai.models.mert import resolve_checkpoint as r; c = r('m-a-p/MERT-v1-95M'); print(c.revision, c.directory)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == commit and out[1] == str(snap)


def test_random_checkpoint_like_and_preset(tmp_path, tiny_stable_ckpt):
    out = write_random_checkpoint(
        tmp_path / "r", like=tiny_stable_ckpt, seed=1, weights_format="both"
    )
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "pytorch_model.bin",
    } <= names
    ck = resolve_checkpoint(out)
    assert ck.config["model_type"] == "mert_model" and ck.config["do_stable_layer_norm"] is True
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert "encoder.pos_conv_embed.conv.weight_g" in state  # the hub's key names
    x = _windows(1)
    _pooled, raw = pooled_hidden_states(load_mert(out), x, keep_raw=True)
    ref = reference_hidden_states(out, x)
    np.testing.assert_allclose(raw[0, -1].numpy(), ref[-1][0].numpy(), atol=1e-4)
    with pytest.raises(ModelError, match="exactly one"):
        write_random_checkpoint(tmp_path / "z")
    with pytest.raises(ModelError, match="not empty"):
        write_random_checkpoint(out, preset="tiny")


def test_do_normalize_defaults_to_true(tmp_path):
    d = write_checkpoint(tmp_path / "n", do_normalize=None)
    assert resolve_checkpoint(d).do_normalize is True
    d2 = write_checkpoint(tmp_path / "f", do_normalize=False)
    assert resolve_checkpoint(d2).do_normalize is False
