"""Attention knock-out: the mask does what it says, under sdpa and eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.errors import TraceConfigError
from mllm_lens.tracing.knockout import cut_edges, knockout, knockout_test


def _deleted_reference(model: ml.LensModel, encoded, removed: list[int], target: int) -> float:
    """Cutting every edge from ``removed`` at every layer == deleting those tokens while keeping the
    other tokens' position ids (rotary attention sees only relative positions of what it reads)."""
    embeds = model.decoder_inputs(encoded.model_inputs)
    keep = [i for i in range(encoded.length) if i not in removed]
    with torch.no_grad():
        out = model.adapter.language_model(inputs_embeds=embeds[:, keep], position_ids=torch.tensor([keep]))
        logits = model.adapter.lm_head(out.last_hidden_state[:, -1]).float()
    return float(torch.softmax(logits, -1)[0, target])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_knockout_equals_token_deletion(models, saved_models, arch, probe, attn):
    model = models[arch]
    if attn == "eager":
        hf = AutoModelForImageTextToText.from_pretrained(saved_models[arch], attn_implementation="eager").eval()
        model = ml.LensModel.wrap(hf, model.processor)
    encoded = probe.encode(model)
    start, end = encoded.image_span
    removed = [start + 1, start + 2, end - 1]
    result = knockout(model, encoded, removed)
    reference = _deleted_reference(model, encoded, removed, result.target_id)
    assert abs(result.knocked_prob - reference) <= 1e-5
    assert abs(result.drop) > 1e-4  # the knock-out did something


def test_nothing_blocked_is_no_change(models, arch, probe):
    result = knockout(models[arch], probe, sources=[])
    assert abs(result.drop) <= 1e-6
    result = knockout(models[arch], probe, sources=[(0, 0)], layers=[])
    assert abs(result.drop) <= 1e-6


def test_blocking_all_sources_of_last_changes_output(models, arch, probe):
    model = models[arch]
    encoded = probe.encode(model)
    last = encoded.length - 1
    result = knockout(model, encoded, sources=range(last), targets=[last])
    assert abs(result.drop) > 1e-3


def test_cut_edges_keep_the_diagonal():
    cut = cut_edges(5, [1, 3], None, torch.device("cpu"))
    assert not cut.diagonal().any()
    assert cut[4, 1] and cut[4, 3] and cut[2, 1] and not cut[4, 2]
    assert cut[0, 1]  # an earlier position's edge to a source too (open where the pattern is not causal)
    only = cut_edges(5, [1], [4], torch.device("cpu"))
    assert only[4, 1] and not only[2, 1]


def test_knockout_test_shapes(models, probe):
    report = knockout_test(models["llava"], probe, k=2, repeats=5, seed=1)
    assert len(report.top_patches) == 2 and report.random_drops.shape == (5,)
    assert np.isfinite(report.random_mean) and "top-k" in report.summary()


def test_bad_inputs(models, probe):
    model = models["llava"]
    with pytest.raises(TraceConfigError):
        knockout(model, probe, sources=[10_000])
    with pytest.raises(TraceConfigError):
        knockout(model, probe, sources=[1], layers=[7])
    with pytest.raises(TraceConfigError):
        knockout_test(model, probe, k=0)
    with pytest.raises(IndexError):
        knockout(model, probe, sources=[(9, 9)])
