"""Qwen3-VL (Qwen2.5-VL's merged patches and M-RoPE, plus DeepStack: the vision tower's feature sets
are added into the residual stream at the image positions right after the first decoder layers).

Load; the decoder call replays the additions and reproduces the full forward; every fast path
(prefix cache, suffix runs, partial restarts, patch sweeps, attention contributions, knock-out,
MultEdit) equals its oracle; image noise reaches the additions (a path that left them clean would
let the clean image leak in, and the oracle catches it); the ``hidden`` state after a layer is what
the next layer reads (transformers' ``output_hidden_states`` reports it before the layer's addition);
the layout maps each token to its merged patch, the grid following the image's size.

The processor is built directly: ``AutoProcessor`` cannot reload Qwen-VL's here, as its video half
needs torchvision (see :mod:`mllm_lens.testing.tiny_qwen3_vl`); the weights load through
``AutoModelForImageTextToText`` as in ``ml.load``.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

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
from PIL import Image
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.testing.tiny_qwen3_vl import tiny_qwen3_vl
from mllm_lens.tracing.corruption import ImageNoise, as_corruption
from mllm_lens.tracing.reference import reference_trace

CORRUPTIONS = FAMILY_CORRUPTIONS
TRACE_CASES = [
    (corruption, site, window, mode)
    for corruption in sorted(CORRUPTIONS)
    for site in ("hidden", "mlp", "attn")
    for window, mode in ((1, "paper"), (3, "rome"))
]
QUESTION_FIRST = "<|im_start|>user {question} <|vision_start|><image><|vision_end|><|im_end|><|im_start|>assistant"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("qwen3_vl"))
    tiny_qwen3_vl(path)
    return path


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    """Weights saved and reloaded through the Auto class ``ml.load`` uses; the processor built directly."""
    torch.set_num_threads(1)
    return ml.LensModel.wrap(AutoModelForImageTextToText.from_pretrained(saved), tiny_qwen3_vl()[1])


def quiet_trace(model, probe, corrupt, site, **kwargs) -> ml.TraceResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        return ml.trace(model, probe, corrupt, site=site, progress=False, **kwargs)


def test_loads_with_the_merged_grid_and_deepstack(model, probe):
    """A 40 x 50 image is resized to 24 x 32 px, 6 x 8 patches of 4 px merged 2 x 2: 12 tokens."""
    assert model.adapter.architecture == "qwen3_vl"
    assert type(model.hf_model).__name__ == "Qwen3VLForConditionalGeneration"
    assert model.adapter.language_model is model.hf_model.model.language_model
    assert (model.adapter.spec.mlp_out, model.num_layers, model.adapter.mrope, model.adapter.deepstack) == (
        "down_proj",
        4,
        True,
        True,
    )
    encoded = probe.encode(model)
    start, end = encoded.image_span
    assert (encoded.tokens[start - 1], encoded.tokens[end]) == ("<|vision_start|>", "<|vision_end|>")
    assert encoded.model_inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert (encoded.patch_layout.rows, encoded.patch_layout.cols, end - start) == (3, 4, 12)
    assert encoded.labels[start:end] == [f"<img {r},{c}>" for r in range(3) for c in range(4)]


def test_the_decoder_call_replays_the_models_deepstack(model, probe):
    """``decoder_call`` captures the wrapper's additions (the vision tower's two DeepStack sets at the
    image positions) and 3-D positions; the decoder replaying them equals the full forward, the bare
    decoder stack (image through the inputs only) does not, and a call without them is refused."""
    encoded = probe.encode(model)
    inputs = encoded.model_inputs
    call = model.decoder_call(inputs)
    start, end = encoded.image_span
    assert call.deepstack is not None and call.deepstack.layers == 2
    assert call.deepstack.positions.tolist() == list(range(start, end))
    with torch.no_grad():
        features = model.hf_model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        for ours, theirs in zip(call.deepstack.features, features.deepstack_features, strict=True):
            assert torch.equal(ours[0], torch.cat(theirs))
        full = model.hf_model(**inputs).logits[0, -1].float()
        ours = model.decoder_logits(call.embeds, positions=call.positions, deepstack=call.deepstack)[0]
        bare = model.decoder_logits(call.embeds, positions=call.positions, deepstack=call.deepstack.with_features([]))
    assert (ours - full).abs().max() <= 1e-5
    assert (bare[0] - full).abs().max() > 1e-2
    with pytest.raises(UnsupportedModelError, match="DeepStack"):
        model.decoder_logits(call.embeds, positions=call.positions)


def test_hidden_state_is_what_the_next_layer_reads(model, probe):
    """The trace's clean ``hidden`` state after layer l is the input of layer l + 1 in the full forward
    (its DeepStack addition included); transformers' ``output_hidden_states`` reports layers 0 and 1
    before their additions, so it differs there at the image positions only."""
    session = ml.tracing.TraceSession(model, probe, ml.noise("this country"), ("hidden",), warn=False)
    executor, encoded = session.executor, session.encoded
    start, end = encoded.image_span
    reads: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(lambda _m, args, _kw, i=i: reads.__setitem__(i, args[0][0]), with_kwargs=True)
        for i, layer in enumerate(model.adapter.layers)
    ]
    with torch.no_grad():
        reported = model.hf_model(**encoded.model_inputs, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    p0 = executor.p0
    for layer in range(model.num_layers - 1):
        assert (executor.activations[("hidden", layer)] - reads[layer + 1][p0:]).abs().max() <= 1e-5
        gap = (reported[layer + 1][0] - reads[layer + 1]).abs().amax(-1)
        if layer < 2:
            assert gap[start:end].min() > 1e-3 and gap[:start].max() == 0 and gap[end:].max() == 0
        else:
            assert gap.max() == 0
    result = session.trace("hidden", progress=False)
    assert result.settings["deepstack"]["added_after_layers"] == [0, 1]
    assert result.settings["deepstack"]["corrupted"] == "left clean"


@pytest.mark.parametrize("corruption,site,window,mode", TRACE_CASES)
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


def test_image_noise_reaches_the_deepstack_additions(model, probe, monkeypatch):
    """Image noise noises each DeepStack set at the noised tokens (own sigma, own draws); text noise
    leaves them clean. Leaving them clean under image noise lets the clean image in through layers 0
    and 1: that path's trace disagrees with the oracle (which noises the sets the wrapper hands its
    decoder) far beyond the tolerance, while the real path agrees."""
    patches = [(0, 0), (1, 2), (2, 3)]
    noise = ImageNoise(patches, scale=3.0)
    session = ml.tracing.TraceSession(model, probe, noise, ("hidden",), warn=False)
    clean, corrupted = session.executor.clean_deepstack, session.executor.corrupted_deepstack
    assert clean is not None and corrupted is not None
    start = session.encoded.image_span[0]
    noised = sorted(start + session.encoded.patch_layout.token_of_patch(*p) for p in patches)
    for before, after in zip(clean.features, corrupted.features, strict=True):
        changed = (before != after).any(-1)[0].nonzero().flatten()
        assert (clean.positions[changed]).tolist() == noised
    assert session.executor.first_changed == noised[0]
    assert session.trace("hidden", progress=False).settings["deepstack"]["corrupted"].startswith("noised")
    text = ml.tracing.TraceSession(model, probe, ml.noise("this country"), ("hidden",), warn=False)
    assert text.executor.corrupted_deepstack is text.executor.clean_deepstack

    encoded = probe.encode(model)
    ref = reference_trace(model, encoded, as_corruption(ml.image_noise()), "hidden")[0]
    fast = quiet_trace(model, probe, ml.image_noise(), "hidden")
    assert np.nanmax(np.abs(fast.scores - ref)) <= 1e-5
    monkeypatch.setattr(ImageNoise, "apply_deepstack", lambda self, encoded, deepstack: deepstack)
    leaky = quiet_trace(model, probe, ml.image_noise(), "hidden")
    assert np.nanmax(np.abs(leaky.scores - ref)) > 1e-3


def test_a_trace_without_the_replay_disagrees_with_the_oracle(model, probe, monkeypatch):
    """With the additions' replay taken out of every fast path, the clean run and the trace move off the oracle."""
    encoded = probe.encode(model)
    ref, clean_p, _corrupted_p, _target = reference_trace(
        model, encoded, as_corruption(ml.noise("this country")), "mlp"
    )
    monkeypatch.setattr(DeepStack, "replayed", lambda self, layers, start: nullcontext())
    for plan in ("prefix", "partial"):
        unreplayed = quiet_trace(model, probe, ml.noise("this country"), "mlp", plan=plan)
        assert abs(unreplayed.clean_prob - clean_p) > 1e-3
        assert np.nanmax(np.abs(unreplayed.scores - ref)) > 1e-3


def test_a_longer_phrase_before_the_image_moves_its_additions(model):
    """With the question before the image, replacing a phrase by a longer one moves the image's
    M-RoPE ids and its DeepStack positions by the length difference (the same features); both plans
    still equal the oracle."""
    image = Image.fromarray((np.random.default_rng(1).random((16, 24, 3)) * 255).astype("uint8"))
    probe = ml.Probe(image, "which continent is this country in", [ml.visual("this country")], template=QUESTION_FIRST)
    replace = ml.replace("this country", "the famous city")
    executor = ml.tracing.TraceSession(model, probe, replace, warn=False).executor
    clean, corrupted = executor.clean_deepstack, executor.corrupted_deepstack
    assert clean is not None and corrupted is not None
    assert torch.equal(corrupted.positions, clean.positions + 1)
    assert all(torch.equal(a, b) for a, b in zip(clean.features, corrupted.features, strict=True))
    assert_trace_equals_oracle(model, probe, replace, "hidden", 1, "paper")


@pytest.mark.parametrize("site,block", [("mlp", 1), ("hidden", 2), ("attn", 1)])
def test_patch_sweeps_equal_reference(model, probe, site, block):
    """Restore and corrupt sweeps (each corrupt-mode row its own noised DeepStack sets) equal the oracle."""
    assert_sweeps_equal_oracle(model, probe, site, block, scale=0.2)


@pytest.mark.parametrize("target", ["visual", "last"])
def test_contributions_equal_eager_direct(model, saved, probe, target):
    assert_contributions_equal_eager(model, saved, probe, target)


def test_knockout_equals_token_deletion(model, probe):
    """Cutting every edge from some image tokens at every layer == deleting them (their 3-D ids and
    DeepStack rows with them) while the other tokens keep theirs."""
    encoded = probe.encode(model)
    start, end = encoded.image_span
    removed = [start + 1, start + 2, end - 1]
    result = ml.tracing.knockout(model, encoded, removed)
    call = model.decoder_call(encoded.model_inputs)
    assert call.deepstack is not None
    keep = [i for i in range(encoded.length) if i not in removed]
    mask = torch.zeros(1, encoded.length, dtype=torch.bool)
    mask[0, start:end] = True
    rows = [i - start for i in range(start, end) if i not in removed]
    with torch.no_grad():
        out = model.hf_model.model.language_model(
            inputs_embeds=call.embeds[:, keep],
            position_ids=call.positions[..., keep],
            visual_pos_masks=mask[:, keep],
            deepstack_visual_embeds=[f[0, rows] for f in call.deepstack.features],
        )
        logits = model.hf_model.lm_head(out.last_hidden_state[:, -1]).float()
    assert abs(result.knocked_prob - float(torch.softmax(logits, -1)[0, result.target_id])) <= 1e-5
    assert abs(result.drop) > 1e-4


def test_scores_vary(model, probe):
    """The traces are not flat: hidden-state restorations span a wide range (the last position brings the
    answer back) over many distinct values, and under image noise restoring single image tokens moves
    p(answer) by a fifth either way (the tiny random model spreads the image over all 12 tokens)."""
    for corrupt in (ml.noise("this country"), ml.image_noise()):
        result = quiet_trace(model, probe, corrupt, "hidden")
        scores = result.scores[~np.isnan(result.scores)]
        assert np.ptp(scores) > 0.1 and len(np.unique(np.round(scores, 9))) >= 20
    start, end = result.image_span
    image = result.scores[:, start:end] / result.corrupted_prob
    assert image.max() > 1.2 and image.min() < 0.8


def test_multedit_edits_the_dense_mlp_and_undoes(model, probe):
    """The edit's δ is optimised on the decoder with the 3-D positions and DeepStack additions."""
    assert_edit_raises_and_undoes(model, probe, factor=10)


@pytest.fixture(scope="module")
def isolated() -> ml.LensModel:
    """The tiny model with its vision tower's attention output zeroed: patches do not mix."""
    hf_model, processor = tiny_qwen3_vl()
    with torch.no_grad():
        for block in hf_model.model.visual.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    return ml.LensModel.wrap(hf_model, processor)


@pytest.mark.parametrize("height,width,bright", [(24, 32, (2, 1)), (32, 16, (3, 1)), (16, 32, (1, 2))])
def test_bright_patch_lands_on_its_merged_token(isolated, height, width, bright):
    """Images of these sizes are not resized: the grid is the image's (3 x 4, 4 x 2, 2 x 4); lighting
    one 8 px block changes exactly the token the layout names for it, in the input embeddings and in
    each DeepStack set, and that token's M-RoPE height and width ids are its row and column."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    dark = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    lit = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    start, end = lit.image_span
    before, after = isolated.decoder_call(dark.model_inputs), isolated.decoder_call(lit.model_inputs)
    assert before.deepstack is not None and after.deepstack is not None
    layout = lit.patch_layout
    assert (layout.rows, layout.cols, end - start) == (height // 8, width // 8, height * width // 64)
    token = layout.token_of_patch(*bright)
    assert layout.labels[token] == f"<img {bright[0]},{bright[1]}>"
    moved = [(after.embeds[0] - before.embeds[0])[start:end].abs().amax(-1)]
    pairs = zip(after.deepstack.features, before.deepstack.features, strict=True)
    moved += [(a[0] - b[0]).abs().amax(-1) for a, b in pairs]
    for change in moved:
        assert [i for i in range(end - start) if change[i] > 0.1 * change.max()] == [token]
    assert (after.positions[1:, 0, start + token] - start).tolist() == list(bright)
