"""Loading through the real from_pretrained path and architecture adapters."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import mllm_lens as ml
from mllm_lens.models import resolve_adapter
from mllm_lens.testing import build_tokenizer, tiny_llava, tiny_llava_next, tiny_llava_phi

EXPECTED = {
    "llava": ("llama", "down_proj", "o_proj"),
    "llava_phi": ("phi", "fc2", "dense"),
    "llava_next": ("llama", "down_proj", "o_proj"),
}


def test_adapter_finds_every_part(models, arch):
    model = models[arch]
    backbone, mlp_out, attn_out = EXPECTED[arch]
    adapter = model.adapter
    assert adapter.backbone == backbone
    assert adapter.num_layers == 5
    for layer in range(adapter.num_layers):
        assert adapter.mlp_out(layer) is getattr(adapter.mlp(layer), mlp_out)
        assert adapter.attn_out(layer) is getattr(adapter.attention(layer), attn_out)
        assert adapter.mlp_out(layer).out_features == adapter.hidden_size
    assert adapter.embed_tokens is model.hf_model.get_input_embeddings()
    assert adapter.lm_head is model.hf_model.get_output_embeddings()


def test_loaded_model_matches_in_memory_model(saved_models, models, arch, probe):
    builders = {"llava": tiny_llava, "llava_phi": tiny_llava_phi, "llava_next": tiny_llava_next}
    fresh, _ = builders[arch]()
    encoded = probe.encode(models[arch])
    with torch.no_grad():
        a = models[arch].hf_model(**encoded.model_inputs).logits
        b = fresh(**encoded.model_inputs).logits
    assert torch.equal(a, b)


def test_decoder_inputs_reproduce_the_full_forward(models, arch, probe):
    model = models[arch]
    encoded = probe.encode(model)
    embeds = model.decoder_inputs(encoded.model_inputs)
    with torch.no_grad():
        full = model.hf_model(**encoded.model_inputs).logits[0, -1].float()
        mine = model.decoder_logits(embeds)[0]
    assert torch.allclose(full, mine, atol=1e-5)


def test_bfloat16_load_traces(saved_models, probe):
    model = ml.load(saved_models["llava"], dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        result = ml.trace(model, probe, site="mlp", progress=False)
    assert result.scores.shape == (5, probe.encode(model).length)
    assert (result.scores >= 0).all() and (result.scores <= 1).all()


def test_text_only_checkpoint_is_refused(tmp_path):
    tokenizer = build_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ml.NotMultimodalError, match="text-only"):
        ml.load(tmp_path)


def test_unknown_architecture_names_what_is_missing():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(
                model_type="mystery", vision_config=object(), text_config=SimpleNamespace(hidden_size=4, model_type="x")
            )
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ml.UnsupportedModelError, match="'mystery'.*wrapper layout"):
        resolve_adapter(Mystery())


def test_missing_mlp_output_projection_is_named():
    model, _ = tiny_llava()
    for layer in model.model.language_model.layers:
        del layer.mlp.down_proj
    with pytest.raises(ml.UnsupportedModelError, match="output projection 'down_proj'"):
        resolve_adapter(model)


def test_unknown_backbone_is_introspected():
    model, _ = tiny_llava()
    model.config.text_config.model_type = "renamed_llama"
    adapter = resolve_adapter(model)
    assert (adapter.spec.attention, adapter.spec.mlp) == ("self_attn", "mlp")
    assert (adapter.spec.mlp_out, adapter.spec.attn_out) == ("down_proj", "o_proj")


def test_unknown_backbone_without_mlp_output_is_refused():
    model, _ = tiny_llava()
    model.config.text_config.model_type = "renamed_llama"
    for layer in model.model.language_model.layers:
        layer.mlp = nn.Identity()
    with pytest.raises(ml.UnsupportedModelError, match="MLP output projection"):
        resolve_adapter(model)
