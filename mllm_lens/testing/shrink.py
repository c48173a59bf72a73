"""A tiny random-weight instance of any image-text-to-text model type, built offline.

transformers' default config of a model type describes a full-size checkpoint. To instantiate
each of them on a laptop, :func:`tiny_config` walks the config and every sub-config (vision
tower, text backbone, projector, audio tower, ...) as a dict and shrinks what sets the size:
layer counts, widths, heads, experts, image and patch sizes. Per-layer lists (``layer_types``)
are cut to the new depth. The dict is then read back by the type's config class, so the class's
own validation runs. Vocabularies are kept, so every special token id of the default config
stays valid. :func:`tiny_model` instantiates the type's ``AutoModelForImageTextToText`` class
after checking the parameter count on the meta device.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig, PreTrainedModel

#: Parameters allowed in a shrunk model: beyond it the config was not shrunk enough to be "tiny".
MAX_PARAMS = 40_000_000

_LAYERS = (
    "num_hidden_layers",
    "num_layers",
    "n_layers",
    "n_layer",
    "depth",
    "encoder_layers",
    "decoder_layers",
    "num_encoder_layers",
    "num_decoder_layers",
    "vision_layers",
    "text_layers",
)
_WIDTHS = (
    "hidden_size",
    "d_model",
    "embed_dim",
    "n_embd",
    "width",
    "hidden_dim",
    "projection_dim",
    "out_hidden_size",
    "codebook_dim",
    "text_hidden_size",
)
_FFN = ("intermediate_size", "ffn_dim", "mlp_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner")
_SMALL = {
    "num_attention_heads": 4,
    "num_heads": 4,
    "n_head": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "max_position_embeddings": 2048,
}
_LAYER_COUNT = 2
_WIDTH = 32
_FFN_WIDTH = 64


def _shrink(node: Any) -> Any:
    if isinstance(node, list):
        return [_shrink(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _shrink(value) for key, value in node.items()}
    old_depth = next((out[k] for k in _LAYERS if isinstance(out.get(k), int)), None)
    same_kv = isinstance(out.get("num_key_value_heads"), int) and out["num_key_value_heads"] == out.get(
        "num_attention_heads"
    )
    for key in _LAYERS:
        if isinstance(out.get(key), int) and out[key] > _LAYER_COUNT:
            out[key] = _LAYER_COUNT
    for key in _WIDTHS:
        if isinstance(out.get(key), int) and out[key] > _WIDTH:
            out[key] = _WIDTH
    for key in _FFN:
        if isinstance(out.get(key), int) and out[key] > _FFN_WIDTH:
            out[key] = _FFN_WIDTH
        elif isinstance(out.get(key), list):  # one width per layer
            out[key] = [min(w, _FFN_WIDTH) if isinstance(w, int) else w for w in out[key]]
    for key, small in _SMALL.items():
        if isinstance(out.get(key), int) and out[key] > small:
            out[key] = small
    if same_kv:  # some architectures require as many key/value heads as query heads
        out["num_key_value_heads"] = out["num_attention_heads"]
    depth = next((out[k] for k in _LAYERS if isinstance(out.get(k), int)), None)
    if depth is not None and old_depth is not None:
        _cut_to_depth(out, old_depth, depth)
    if isinstance(out.get("vision_feature_layer"), list):  # indices into the (now shallow) tower
        out["vision_feature_layer"] = [-(i + 1) for i in range(len(out["vision_feature_layer"]))]
    rope = out.get("rope_parameters") or out.get("rope_scaling")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
        half = int(out.get("head_dim") or _WIDTH // _SMALL["num_attention_heads"]) // 2
        n = len(rope["mrope_section"])
        rope["mrope_section"] = [half - (n - 1)] + [1] * (n - 1)
    if isinstance(out.get("patch_size"), int) and isinstance(out.get("image_size"), int):
        out["patch_size"] = min(out["patch_size"], 8)
        out["image_size"] = min(out["image_size"], 4 * out["patch_size"])
    return out


def _cut_to_depth(out: dict, old_depth: int, depth: int) -> None:
    """Per-layer lists (one entry per old layer) and per-layer dicts keyed by layer index, cut to
    ``depth`` layers."""
    for key, value in out.items():
        if isinstance(value, list) and len(value) == old_depth and (key.endswith("layer_types") or old_depth > 1):
            out[key] = value[:depth]
        elif key == "per_layer_config" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if int(k) < depth}


def tiny_config(model_type: str) -> PretrainedConfig:
    """The default config of ``model_type``, shrunk (see the module docstring)."""
    default = AutoConfig.for_model(model_type)
    shrunk = _shrink(default.to_dict())
    shrunk.pop("model_type", None)
    shrunk.pop("transformers_version", None)
    config = type(default)(**shrunk)
    config._attn_implementation = "eager"
    return config


def tiny_model(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A random ``AutoModelForImageTextToText`` of ``model_type`` from :func:`tiny_config`.

    Raises ``ValueError`` if the shrunk model still has more than :data:`MAX_PARAMS` parameters."""
    config = tiny_config(model_type)
    with torch.device("meta"):
        probe = AutoModelForImageTextToText.from_config(config)
    n_params = sum(p.numel() for p in probe.parameters())
    if n_params > MAX_PARAMS:
        raise ValueError(f"{n_params / 1e6:.0f}M parameters after shrinking (limit {MAX_PARAMS / 1e6:.0f}M)")
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config).eval()
