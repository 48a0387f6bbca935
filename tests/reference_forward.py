"""An independent HuBERT/MERT forward in plain torch functional code, written from MERT's
original (pre-transformers-5) semantics, reading weights straight from the hub-layout files.
Used only to check that native loading computes what MERT computes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)


def reference_hidden_states(directory: Path, x: torch.Tensor) -> list[torch.Tensor]:
    """``x [batch, samples]`` (already normalised) → list of ``num_hidden_layers + 1`` tensors
    ``[batch, frames, hidden]``, as MERT's own code returns them."""
    cfg = json.loads((directory / "config.json").read_text())
    w = read_weights(directory)
    eps = cfg["layer_norm_eps"]
    h = x[:, None, :].double()
    W = {k: v.double() for k, v in w.items()}
    for i, stride in enumerate(cfg["conv_stride"]):
        p = f"feature_extractor.conv_layers.{i}."
        h = F.conv1d(h, W[p + "conv.weight"], W.get(p + "conv.bias"), stride=stride)
        if cfg["feat_extract_norm"] == "group" and i == 0:
            h = F.group_norm(
                h, h.shape[1], W[p + "layer_norm.weight"], W[p + "layer_norm.bias"], eps=1e-5
            )
        elif cfg["feat_extract_norm"] == "layer":
            h = F.layer_norm(
                h.transpose(1, 2),
                (h.shape[1],),
                W[p + "layer_norm.weight"],
                W[p + "layer_norm.bias"],
                eps=1e-5,
            ).transpose(1, 2)
        h = F.gelu(h)
    h = h.transpose(1, 2)
    if cfg.get("feat_proj_layer_norm", True):
        h = F.layer_norm(
            h,
            (h.shape[-1],),
            W["feature_projection.layer_norm.weight"],
            W["feature_projection.layer_norm.bias"],
            eps=eps,
        )
    h = F.linear(
        h, W["feature_projection.projection.weight"], W["feature_projection.projection.bias"]
    )
    # positional conv with weight norm over dim 2: w = g * v / ||v|| (norm over dims 0 and 1)
    g, v = W["encoder.pos_conv_embed.conv.weight_g"], W["encoder.pos_conv_embed.conv.weight_v"]
    kw = g * v / v.norm(dim=(0, 1), keepdim=True)
    k = cfg["num_conv_pos_embeddings"]
    pos = F.conv1d(
        h.transpose(1, 2),
        kw,
        W["encoder.pos_conv_embed.conv.bias"],
        padding=k // 2,
        groups=cfg["num_conv_pos_embedding_groups"],
    )
    if k % 2 == 0:
        pos = pos[:, :, :-1]
    h = h + F.gelu(pos).transpose(1, 2)
    stable = cfg["do_stable_layer_norm"]

    def ln(t, name):
        return F.layer_norm(t, (t.shape[-1],), W[name + ".weight"], W[name + ".bias"], eps=eps)

    if not stable:
        h = ln(h, "encoder.layer_norm")
    states = []
    heads = cfg["num_attention_heads"]
    for i in range(cfg["num_hidden_layers"]):
        states.append(h)
        p = f"encoder.layers.{i}."
        r = h
        if stable:
            h = ln(h, p + "layer_norm")
        h = r + _attention(h, W, p + "attention.", heads)
        if not stable:
            h = ln(h, p + "layer_norm")
            h = h + _ffn(h, W, p + "feed_forward.")
            h = ln(h, p + "final_layer_norm")
        else:
            h = h + _ffn(ln(h, p + "final_layer_norm"), W, p + "feed_forward.")
    if stable:
        h = ln(h, "encoder.layer_norm")
    states.append(h)
    return [s.float() for s in states]


def _attention(h, W, p, heads):
    b, t, d = h.shape
    hd = d // heads
    q = F.linear(h, W[p + "q_proj.weight"], W[p + "q_proj.bias"]) * hd**-0.5
    k = F.linear(h, W[p + "k_proj.weight"], W[p + "k_proj.bias"])
    v = F.linear(h, W[p + "v_proj.weight"], W[p + "v_proj.bias"])
    split = lambda z: z.view(b, t, heads, hd).transpose(1, 2)  # noqa: E731
    a = torch.softmax(split(q) @ split(k).transpose(-1, -2), dim=-1) @ split(v)
    return F.linear(
        a.transpose(1, 2).reshape(b, t, d), W[p + "out_proj.weight"], W[p + "out_proj.bias"]
    )


def _ffn(h, W, p):
    h = F.gelu(F.linear(h, W[p + "intermediate_dense.weight"], W[p + "intermediate_dense.bias"]))
    return F.linear(h, W[p + "output_dense.weight"], W[p + "output_dense.bias"])
