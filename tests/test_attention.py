"""Attention contributions (Eq. 1) equal a direct computation from an eager model's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_check import eager_contributions, eager_lens

import mllm_lens as ml
from mllm_lens.errors import ProbeError, TraceConfigError
from mllm_lens.results import ContributionResult
from mllm_lens.tracing.attention import (
    attention_contributions,
    capture_attention_inputs,
    resolve_target,
    source_vectors,
)


@pytest.mark.parametrize("target", ["visual", "last"])
def test_contributions_equal_eager_direct(models, saved_models, arch, probe, target):
    model = models[arch]
    eager = eager_lens(saved_models[arch], model)
    encoded = probe.encode(model)
    t = resolve_target(encoded, target)
    per_head, total = eager_contributions(eager, encoded, t)
    # same weights, eager everywhere: equal to float32 rounding
    on_eager = attention_contributions(eager, encoded, target=target)
    assert on_eager.per_head.shape == per_head.shape
    assert np.abs(on_eager.per_head - per_head).max() <= 1e-5
    assert np.abs(on_eager.total - total).max() <= 1e-5
    # the default (sdpa) model: its residual stream differs from eager's by float32 rounding only,
    # which grows through the layers (relative 1.5e-5 seen; the reduction order depends on threads)
    result = attention_contributions(model, encoded, target=target)
    assert np.abs(result.per_head - per_head).max() <= 1e-4 * max(1.0, np.abs(per_head).max())
    assert np.abs(result.total - total).max() <= 1e-4 * max(1.0, np.abs(total).max())
    assert not result.total[:, t + 1 :].any()  # causal: nothing from the future
    assert result.total.max() > 1e-2
    if arch == "llava":  # GQA: 4 heads over 2 kv heads
        assert model.adapter.language_model.config.num_key_value_heads == 2


def test_sources_plus_bias_equal_attention_output(models, arch, probe):
    model = models[arch]
    encoded = probe.encode(model)
    t = resolve_target(encoded, "visual")
    outputs = {}
    handles = [
        model.adapter.attention(layer).register_forward_hook(
            lambda _m, _a, out, layer=layer: outputs.__setitem__(layer, out[0][0].detach())
        )
        for layer in range(model.num_layers)
    ]
    embeds = model.decoder_inputs(encoded.model_inputs)
    try:
        inputs = capture_attention_inputs(model, embeds, range(model.num_layers))
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(model.num_layers):
        vectors = source_vectors(model, inputs, layer, t)
        bias = model.adapter.attn_out(layer).bias
        summed = vectors.sum((0, 1)) + (0 if bias is None else bias.detach())
        assert torch.allclose(summed, outputs[layer][t], atol=1e-5)


def test_visual_grid_and_roundtrip(models, probe, tmp_path):
    model = models["llava"]
    result = attention_contributions(model, probe, target="last", layers=[0, 2])
    start, end = result.image_span
    rows, cols = result.patch_grid
    assert result.visual.shape == (2, rows, cols)
    assert np.allclose(result.visual.reshape(2, -1), result.total[:, start:end])
    assert len(result.top_patches(3)) == 3
    back = ContributionResult.load(result.save(tmp_path / "c.npz"))
    assert np.array_equal(back.per_head, result.per_head) and back.layers == [0, 2]
    assert back.target == result.target and back.labels == result.labels


def test_llava_next_visual_uses_base_grid(models, probe):
    model = models["llava_next"]
    result = attention_contributions(model, probe, target="last", layers=[1])
    encoded = probe.encode(model)
    layout = encoded.patch_layout
    start = encoded.image_span[0]
    r, c = 1, 0
    token = start + layout.token_of_patch(r, c)
    assert result.visual[0, r, c] == result.total[0, token]


def test_bad_inputs(models, probe, image):
    model = models["llava"]
    with pytest.raises(TraceConfigError):
        attention_contributions(model, probe, layers=[99])
    with pytest.raises(ProbeError):
        attention_contributions(model, probe, target=10_000)
    with pytest.raises(ProbeError):
        attention_contributions(model, probe, target="middle")
    with pytest.raises(ProbeError):
        attention_contributions(model, ml.Probe(image, "which city is it"), target="visual")
