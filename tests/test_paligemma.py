"""PaliGemma (a prefix-LM: image and prompt read each other both ways): load, the captured pattern
reproduces the full forward, no position is a shared prefix (every run recomputes from position 0;
the partial plan still reuses the corrupted run below the restored layer), every fast path equals
its oracle, and the causal-only fast path would not.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from oracle_check import (
    FAMILY_CORRUPTIONS,
    assert_contributions_equal_eager,
    assert_edit_raises_and_undoes,
    assert_sweeps_equal_oracle,
    assert_trace_equals_oracle,
)

import mllm_lens as ml
from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.testing.tiny_paligemma import tiny_paligemma
from mllm_lens.tracing.corruption import as_corruption
from mllm_lens.tracing.reference import reference_trace

CORRUPTIONS = FAMILY_CORRUPTIONS
#: Every corruption x site in the paper's window; the ROME window once per corruption.
TRACE_CASES = [(c, site, 1, "paper") for c in sorted(CORRUPTIONS) for site in ("hidden", "mlp", "attn")]
TRACE_CASES += [("noise", "mlp", 3, "rome"), ("image", "attn", 3, "rome"), ("replace", "hidden", 3, "rome")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("paligemma"))
    tiny_paligemma(path)
    return path


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    torch.set_num_threads(1)
    return ml.load(saved)


def test_loads_with_the_patch_grid_and_the_bos_after_it(model, probe):
    encoded = probe.encode(model)
    assert model.adapter.architecture == "paligemma" and model.adapter.backbone == "gemma"
    assert model.adapter.position_offset == 1  # PaliGemma numbers positions from 1; every call replays it
    start, end = encoded.image_span
    assert (start, end) == (0, 17)
    assert encoded.labels[start:end] == [*(f"<img {r},{c}>" for r in range(4) for c in range(4)), "<img bos>"]
    assert encoded.tokens[end - 1] == "<s>"


def test_the_prefix_is_bidirectional_and_no_position_is_a_shared_prefix(model, probe):
    encoded = probe.encode(model)
    embeds, _positions, pattern, _deepstack = model.decoder_call(encoded.model_inputs)
    assert pattern is not None and bool(pattern.allowed["all"].all())
    assert {pattern.restart(p) for p in range(encoded.length)} == {0}
    with torch.no_grad():
        full = model.hf_model(**encoded.model_inputs).logits[0, -1].float()
        ours = model.decoder_logits(embeds, pattern=pattern)[0]
    assert (ours - full).abs().max() <= 1e-5
    with pytest.raises(UnsupportedModelError, match="prefix-LM"):
        model.decoder_logits(embeds)
    result = ml.trace(model, probe, ml.noise("this country"), site="mlp", progress=False)
    assert result.settings["recomputed_from"] == 0 and result.settings["first_corrupted_position"] == 20
    assert result.settings["attention"]["kind"].startswith("prefix-LM")


@pytest.mark.parametrize("corruption,site,window,mode", TRACE_CASES)
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.mark.parametrize("plan", ["prefix", "partial"])
def test_the_causal_only_fast_path_would_be_wrong(model, probe, monkeypatch, plan):
    """Reusing the clean run before the noised phrase (prefix plan) or the corrupted run before the
    restored position (partial plan), as in a causal decoder, leaves the oracle."""
    corruption = ml.noise("this country")
    ref, *_ = reference_trace(model, probe.encode(model), as_corruption(corruption), "mlp", 1, "paper")
    monkeypatch.setattr(AttentionPattern, "restart", lambda self, position: position)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        naive = ml.trace(model, probe, corruption, site="mlp", progress=False, plan=plan, batch_size=7)
    assert np.nanmax(np.abs(naive.scores - ref)) > 1e-3


@pytest.mark.parametrize("site,block", [("hidden", 1), ("mlp", 2)])
def test_patch_sweeps_equal_reference(model, probe, site, block):
    """Noise of 0.2 sigma: at 0.5 on all 16 tokens the answer is gone whichever patch is restored."""
    assert_sweeps_equal_oracle(model, probe, site, block, scale=0.2)


@pytest.mark.parametrize("target", ["visual", 5])
def test_contributions_equal_eager_direct(model, saved, probe, target):
    """Target 5 is an image token: it reads every prompt token."""
    assert_contributions_equal_eager(model, saved, probe, target)


def test_multedit_edits_the_dense_mlp_and_undoes(model, probe):
    assert_edit_raises_and_undoes(model, probe, factor=10)


def test_knockout_equals_token_deletion(model, probe):
    """Cutting every edge from three image tokens at every layer (earlier ones read them too) ==
    deleting them, the others keeping their (1-based) positions."""
    encoded = probe.encode(model)
    removed = [2, 7, 11]
    result = ml.tracing.knockout(model, encoded, removed)
    embeds = model.decoder_call(encoded.model_inputs).embeds
    keep = [i for i in range(encoded.length) if i not in removed]
    with torch.no_grad():
        out = model.adapter.language_model(
            inputs_embeds=embeds[:, keep],
            attention_mask=torch.zeros(1, 1, len(keep), len(keep)),
            position_ids=torch.tensor([keep]) + 1,
        )
        logits = model.adapter.lm_head(out.last_hidden_state[:, -1]).float()
    assert abs(result.knocked_prob - float(torch.softmax(logits, -1)[0, result.target_id])) <= 1e-5
    assert abs(result.drop) > 1e-4


def test_paligemma2_is_refused():
    model, _ = tiny_paligemma()
    model.config.text_config.model_type = "gemma2"
    with pytest.raises(UnsupportedModelError, match="PaliGemma 2"):
        ml.LensModel.wrap(model, None)
