"""Gemma 3 (an image's tokens read each other both ways; sliding-window and global layers): load,
the captured attention pattern reproduces the full forward, every fast path (prefix cache, suffix
runs, partial restarts, patch sweeps, attention contributions, MultEdit) equals its oracle, and the
causal-only fast path would not: a restoration or corruption inside the image block changes the
block's earlier positions, so runs restart at the block's start.
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
from mllm_lens.testing.tiny_gemma3 import tiny_gemma3
from mllm_lens.tracing.corruption import as_corruption
from mllm_lens.tracing.patches import patch_sweep
from mllm_lens.tracing.reference import reference_patch_sweep, reference_trace

CORRUPTIONS = FAMILY_CORRUPTIONS
TRACE_CASES = [
    (corruption, site, window, mode)
    for corruption in sorted(CORRUPTIONS)
    for site in ("hidden", "mlp", "attn")
    for window, mode in ((1, "paper"), (3, "rome"))
]
#: Image tokens 4..19 (16 pooled tokens between <start_of_image> at 3 and <end_of_image> at 20).
BLOCK = (4, 20)
#: Noise on a region of the pooled grid that starts inside the image block (its row 2).
REGION = ml.image_noise([(2, 1), (2, 2), (3, 1)], scale=3.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("gemma3"))
    tiny_gemma3(path)
    return path


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    torch.set_num_threads(1)
    return ml.load(saved)


def test_loads_with_the_pooled_grid_and_its_markers(model, probe):
    encoded = probe.encode(model)
    assert model.adapter.architecture == "gemma3" and type(model.hf_model).__name__ == "Gemma3ForConditionalGeneration"
    assert model.adapter.pattern == "bidirectional image block"
    start, end = encoded.image_span
    assert (start, end) == (BLOCK[0] - 1, BLOCK[1] + 1)
    assert encoded.labels[start:end] == [
        "<img boi>",
        *(f"<img {r},{c}>" for r in range(4) for c in range(4)),
        "<img eoi>",
    ]
    assert (encoded.patch_layout.rows, encoded.patch_layout.cols) == (4, 4)
    assert encoded.tokens[start:end] == ["<start_of_image>", *["<image>"] * 16, "<end_of_image>"]


def test_the_captured_pattern_is_the_models_and_reproduces_its_forward(model, probe):
    """The block reads itself both ways at global layers, within the window at sliding ones; text
    stays causal. The decoder on the captured pattern equals the full forward; its own default
    (causal, sliding) mask does not; a call without the pattern is refused."""
    encoded = probe.encode(model)
    embeds, _positions, pattern, _deepstack = model.decoder_call(encoded.model_inputs)
    assert pattern is not None and pattern.kind == "bidirectional image block, sliding window 6"
    a, b = BLOCK
    full, sliding = pattern.allowed["full_attention"], pattern.allowed["sliding_attention"]
    assert bool(full[a, b - 1]) and not bool(full[a - 1, a]) and not bool(full[b, b + 1])
    assert not bool(sliding[b - 1, a]) and bool(sliding[b - 1, b - 6])  # the window cuts the block
    assert [pattern.restart(p) for p in (a - 1, a, a + 7, b - 1, b, b + 3)] == [a - 1, a, a, a, b, b + 3]
    with torch.no_grad():
        full_logits = model.hf_model(**encoded.model_inputs).logits[0, -1].float()
        ours = model.decoder_logits(embeds, pattern=pattern)[0]
        default = model.adapter.lm_head(model.adapter.language_model(inputs_embeds=embeds).last_hidden_state[0, -1])
    assert (ours - full_logits).abs().max() <= 1e-5
    assert (default.float() - full_logits).abs().max() > 1e-2
    with pytest.raises(UnsupportedModelError, match="bidirectional image block"):
        model.decoder_logits(embeds)


def test_phrase_noise_is_scaled_like_the_embeddings_the_decoder_reads(model, probe):
    """Gemma multiplies its token embeddings by sqrt(hidden) = 8: sigma is the table's std times 8."""
    encoded = probe.encode(model)
    clean = model.decoder_call(encoded.model_inputs).embeds
    start, end = encoded.spans["this country"]
    moved = (ml.noise("this country").apply(model, encoded, clean) - clean)[0, start:end]
    sigma = model.adapter.embed_tokens.weight.std().item() * 8
    assert abs(moved.std().item() / (3 * sigma) - 1) < 0.2


@pytest.mark.parametrize("corruption,site,window,mode", TRACE_CASES)
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.mark.parametrize("site", ["hidden", "mlp"])
def test_noise_starting_inside_the_block_recomputes_from_its_start(model, probe, site):
    """Noise from the third row of the pooled grid changes the block's first rows too: both plans
    recompute from the block's start (said in the settings) and equal the oracle."""
    assert_trace_equals_oracle(model, probe, REGION, site, 1, "paper")
    result = ml.trace(model, probe, REGION, site=site, progress=False)
    assert result.settings["first_corrupted_position"] == BLOCK[0] + 2 * 4 + 1  # <img 2,1>
    assert result.settings["recomputed_from"] == BLOCK[0]
    assert result.settings["attention"]["kind"].startswith("bidirectional image block")


def _causal_only(monkeypatch) -> None:
    """The fast paths as if the decoder were causal: every position restarts at itself."""
    monkeypatch.setattr(AttentionPattern, "restart", lambda self, position: position)


@pytest.mark.parametrize("plan", ["prefix", "partial"])
def test_the_causal_only_fast_path_would_be_wrong(model, probe, monkeypatch, plan):
    """Restarting at the restored (prefix plan: the first noised) position, as in a causal decoder,
    reuses stale keys of the block's earlier positions: the trace leaves the oracle."""
    encoded = probe.encode(model)
    ref, *_ = reference_trace(model, encoded, as_corruption(REGION), "hidden", 1, "paper")
    _causal_only(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        naive = ml.trace(model, probe, REGION, site="hidden", progress=False, plan=plan, batch_size=7)
    assert np.nanmax(np.abs(naive.scores - ref)) > 1e-3


def test_the_causal_only_patch_sweep_would_be_wrong(model, probe, monkeypatch):
    encoded = probe.encode(model)
    noise = ml.image_noise(scale=0.5)
    ref, *_ = reference_patch_sweep(model, encoded, "restore", "hidden", noise=noise)
    _causal_only(monkeypatch)
    naive = patch_sweep(model, encoded, "restore", "hidden", noise=noise, batch_size=3)
    assert np.abs(naive.scores - ref).max() > 1e-3


@pytest.mark.parametrize("site,block", [("hidden", 1), ("mlp", 2), ("attn", 1)])
def test_patch_sweeps_equal_reference(model, probe, site, block):
    assert_sweeps_equal_oracle(model, probe, site, block, scale=0.5)


@pytest.mark.parametrize("target", ["visual", "last", 10])
def test_contributions_equal_eager_direct(model, saved, probe, target):
    """Target 10 is an image token: it reads later image tokens (the block) within its window."""
    assert_contributions_equal_eager(model, saved, probe, target)


def test_multedit_edits_the_dense_mlp_and_undoes(model, probe):
    """The edit's δ is optimised on the decoder with the model's masks. Gemma 3 normalises each MLP
    output (post-feedforward RMSNorm) before adding it to the residual stream, so one layer's write is
    bounded: on the random tiny model p("Rome") rises about 1.3-fold (Qwen2-VL's unnormalised MLP: 95x)."""
    assert_edit_raises_and_undoes(model, probe, factor=1.2)


def test_knockout_equals_token_deletion(model, probe):
    """Cutting every edge from three image tokens at every layer (edges from earlier block tokens,
    which read them both ways, included) == deleting them while the others keep their positions and
    the model's masks between them (global and sliding)."""
    encoded = probe.encode(model)
    removed = [5, 9, 12]
    result = ml.tracing.knockout(model, encoded, removed)
    embeds, _positions, pattern, _deepstack = model.decoder_call(encoded.model_inputs)
    keep = [i for i in range(encoded.length) if i not in removed]
    low = torch.finfo(embeds.dtype).min
    masks = {
        key: torch.zeros(len(keep), len(keep)).masked_fill(~allowed[keep][:, keep], low)[None, None]
        for key, allowed in pattern.allowed.items()
    }
    with torch.no_grad():
        out = model.adapter.language_model(
            inputs_embeds=embeds[:, keep], attention_mask=masks, position_ids=torch.tensor([keep])
        )
        logits = model.adapter.lm_head(out.last_hidden_state[:, -1]).float()
    assert abs(result.knocked_prob - float(torch.softmax(logits, -1)[0, result.target_id])) <= 1e-5
    assert abs(result.drop) > 1e-4  # the knock-out did something
