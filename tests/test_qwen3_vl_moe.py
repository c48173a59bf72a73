"""Qwen3-VL-MoE: Qwen3-VL's wrapper (merged patches, M-RoPE, DeepStack) over a decoder whose MLPs are
routed mixture-of-experts blocks (4 experts, top-2 per token in the tiny model).

Tracing: the ``mlp`` site is the whole block's output; every fast path (prefix cache, partial
restarts, batches of 7) equals the per-cell oracle, which holds only if a token's routing does not
depend on the other rows of its batch (checked directly too: the corruption changes routing, batching
does not). Editing: every MultEdit entry point refuses an MLP edit with the reason (no dense down
projection: the experts' weights are fused 3-D tensors) before any forward pass; the attention output
projection is a dense ``o_proj`` and still edits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from oracle_check import (
    FAMILY_CORRUPTIONS,
    assert_contributions_equal_eager,
    assert_sweeps_equal_oracle,
    assert_trace_equals_oracle,
)
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.editing import key_stats
from mllm_lens.editing.key_stats import key_second_moment
from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.lens_model import LensModel
from mllm_lens.testing.tiny_qwen3_vl import tiny_qwen3_vl_moe

TRACE_CASES = [
    (corruption, site, window, mode)
    for corruption in sorted(FAMILY_CORRUPTIONS)
    for site in ("hidden", "mlp", "attn")
    for window, mode in ((1, "paper"), (3, "rome"))
]


def refusal(layer: int) -> str:
    """The edit refusal's pattern for ``layer``: what the block is, its fused weights, why."""
    return (
        rf"mixture-of-experts MLP in layer {layer} \(Qwen3VLMoeTextSparseMoeBlock\): fused expert weights "
        r"\(experts\.gate_up_proj \[4, 64, 64\], experts\.down_proj \[4, 64, 32\]\), no dense down projection"
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("qwen3_vl_moe"))
    tiny_qwen3_vl_moe(path)
    return path


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    """Weights saved and reloaded through the Auto class ``ml.load`` uses; the processor built directly."""
    torch.set_num_threads(1)
    return ml.LensModel.wrap(AutoModelForImageTextToText.from_pretrained(saved), tiny_qwen3_vl_moe()[1])


def quiet_trace(model, probe, corrupt, site, **kwargs) -> ml.TraceResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        return ml.trace(model, probe, corrupt, site=site, progress=False, **kwargs)


def test_loads_with_routed_mlp_blocks(model, probe):
    """Qwen3-VL's wrapper tables apply; each layer's ``mlp`` site is its whole MoE block, which has no
    dense output projection; the decoder call (3-D ids, DeepStack) reproduces the full forward."""
    adapter = model.adapter
    assert (adapter.architecture, adapter.backbone) == ("qwen3_vl_moe", "qwen3_vl_moe_text")
    assert (model.num_layers, adapter.mrope, adapter.deepstack) == (4, True, True)
    for layer in range(model.num_layers):
        block = adapter.site_module("mlp", layer)
        assert block is adapter.layers[layer].mlp and type(block).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
        assert adapter.mlp_out_refusal(layer).startswith(f"mixture-of-experts MLP in layer {layer}")
    encoded = probe.encode(model)
    call = model.decoder_call(encoded.model_inputs)
    assert call.deepstack is not None and call.deepstack.layers == 2
    with torch.no_grad():
        full = model.hf_model(**encoded.model_inputs).logits[0, -1].float()
        ours = model.decoder_logits(call.embeds, positions=call.positions, deepstack=call.deepstack)[0]
    assert (ours - full).abs().max() <= 1e-5


def routes(model: ml.LensModel, embeds: torch.Tensor, call) -> list[torch.Tensor]:
    """Each layer's chosen experts ``[B, T, 2]`` (ascending per token) for decoder inputs ``embeds [B, T, d]``."""
    chosen: list[torch.Tensor] = []
    handles = [
        layer.mlp.gate.register_forward_hook(lambda _m, _a, out: chosen.append(out[2].sort(-1).values))
        for layer in model.adapter.layers
    ]
    deepstack = call.deepstack.stack([call.deepstack] * len(embeds))
    try:
        with torch.no_grad():
            model.decoder(embeds, positions=call.positions, deepstack=deepstack)
    finally:
        for handle in handles:
            handle.remove()
    return [c.view(len(embeds), embeds.shape[1], -1) for c in chosen]


def test_routing_is_per_token_not_per_batch(model, probe):
    """Routing is discrete (top-2), so the fast paths are exact only if a row's experts do not depend on
    the rows batched with it: clean and noised inputs routed together pick, token by token, the experts
    each picks alone; and the noise does change some tokens' experts (restoring the MLP site restores them)."""
    encoded = probe.encode(model)
    call = model.decoder_call(encoded.model_inputs)
    torch.manual_seed(0)
    noised = call.embeds.clone()
    noised[0, encoded.image_span[1] :] += 3.0 * torch.randn_like(noised[0, encoded.image_span[1] :])
    together = routes(model, torch.cat([call.embeds, noised]), call)
    alone = [routes(model, embeds, call) for embeds in (call.embeds, noised)]
    for layer, both in enumerate(together):
        for row in range(2):
            assert torch.equal(both[row], alone[row][layer][0]), (layer, row)
    assert any(not torch.equal(both[0], both[1]) for both in together)


@pytest.mark.parametrize("corruption,site,window,mode", TRACE_CASES)
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, FAMILY_CORRUPTIONS[corruption], site, window, mode)


@pytest.mark.parametrize("site,block", [("mlp", 1), ("hidden", 2), ("attn", 1)])
def test_patch_sweeps_equal_reference(model, probe, site, block):
    assert_sweeps_equal_oracle(model, probe, site, block, scale=0.2)


@pytest.mark.parametrize("target", ["visual", "last"])
def test_contributions_equal_eager_direct(model, saved, probe, target):
    assert_contributions_equal_eager(model, saved, probe, target)


def test_scores_vary(model, probe):
    """The traces are not flat: restoring the MLP blocks' or hidden states moves p(answer) over a wide
    range of distinct values."""
    for corrupt, site in ((ml.noise("this country"), "mlp"), (ml.image_noise(), "hidden")):
        result = quiet_trace(model, probe, corrupt, site)
        scores = result.scores[~np.isnan(result.scores)]
        assert np.ptp(scores) > 0.1 and len(np.unique(np.round(scores, 9))) >= 20, site


@pytest.fixture
def no_forward(model, monkeypatch):
    """Any decoder call, full forward or corpus for key statistics fails the test: refusals come first."""

    def forbidden(*_args, **_kwargs):
        raise AssertionError("work done before the refusal")

    for name in ("decoder", "decoder_call"):
        monkeypatch.setattr(LensModel, name, forbidden)
    monkeypatch.setattr(model.hf_model, "forward", forbidden)
    monkeypatch.setattr(key_stats, "default_corpus", forbidden)


def test_every_mlp_edit_entry_point_refuses_before_any_work(model, probe, no_forward):
    request = ml.EditRequest(probe, "Rome")
    calls = {
        "edit": lambda: ml.edit(model, probe, "Rome", layer=1),
        "edit, causal layer": lambda: ml.edit(model, probe, "Rome"),
        "edit_many": lambda: ml.edit_many(model, [request, request], layers=[1, 2]),
        "finetune": lambda: ml.edit(model, probe, "Rome", layer=1, method="finetune"),
        "evaluate_edit": lambda: ml.evaluate_edit(model, [request], layers=1),
        "key statistics": lambda: key_second_moment(model, 1),
    }
    for name, call in calls.items():
        # without a layer, edit refuses the first layer it could pick (before the trace that picks one)
        with pytest.raises(UnsupportedModelError, match=refusal(0 if name == "edit, causal layer" else 1)):
            call()
    with pytest.raises(AssertionError, match="work done"):  # the guard is live: an edit that may goes ahead
        ml.edit(model, probe, "Rome", layer=1, site="attn")


def test_the_attention_output_projection_still_edits(model, probe):
    """``o_proj`` is dense: a MultEdit there changes it and leaving the edit restores it bit for bit."""
    weight = model.adapter.attn_out(1).weight
    before = weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.editing.EditIneffectiveWarning)
        with ml.edit(model, probe, "Rome", layer=1, site="attn", key_token="last"):
            assert not torch.equal(weight.detach(), before)
    assert torch.equal(weight.detach(), before)


def test_an_unknown_moe_backbone_is_introspected_for_tracing():
    """Without the backbone's table entry, introspection finds the attention and its projection and
    takes the routed block as the MLP (no dense projection); MLP edits are refused with the reason."""
    hf_model, processor = tiny_qwen3_vl_moe()
    hf_model.config.text_config.model_type = "renamed_moe"
    lens = ml.LensModel.wrap(hf_model, processor)
    assert (lens.adapter.spec.attention, lens.adapter.spec.attn_out) == ("self_attn", "o_proj")
    assert (lens.adapter.spec.mlp, lens.adapter.spec.mlp_out) == ("mlp", None)
    with pytest.raises(UnsupportedModelError, match=refusal(1)):
        lens.adapter.mlp_out(1)
