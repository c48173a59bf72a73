"""Qwen2-VL and Qwen2.5-VL (2 x 2 merged patches of an image kept near its size, M-RoPE decoder):
load, every fast path gets the model's 3-D position ids (prefix cache, suffix runs, partial
restarts, patch sweeps, attention contributions, MultEdit) and equals its oracle, a replaced
phrase of another length shifts the positions after it as the model's own get_rope_index does,
and the layout maps each token to its merged patch, the grid following the image's size.

The processor is built directly: ``AutoProcessor`` cannot reload Qwen-VL's here, as its video
half needs torchvision (see :mod:`mllm_lens.testing.tiny_qwen2_vl`); the weights load through
``AutoModelForImageTextToText`` as in ``ml.load``.
"""

from __future__ import annotations

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
from mllm_lens.testing.tiny_qwen2_vl import tiny_qwen2_vl

CORRUPTIONS = FAMILY_CORRUPTIONS
CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
#: Qwen2-VL: every corruption x site x window mode. Qwen2.5-VL runs the same decoder code (its vision
#: tower and rope index differ), so each corruption once, on another site and window each.
TRACE_CASES = [
    ("qwen2_vl", corruption, site, window, mode)
    for corruption in sorted(CORRUPTIONS)
    for site in ("hidden", "mlp", "attn")
    for window, mode in ((1, "paper"), (3, "rome"))
] + [("qwen2_5_vl", "noise", "mlp", 1, "paper"), ("qwen2_5_vl", "image", "hidden", 3, "rome")]
TRACE_CASES += [("qwen2_5_vl", "replace", "attn", 3, "rome")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    paths = {}
    for model_type in CLASSES:
        paths[model_type] = str(tmp_path_factory.mktemp(model_type))
        tiny_qwen2_vl(paths[model_type], model_type=model_type)
    return paths


@pytest.fixture(scope="module")
def models(saved) -> dict[str, ml.LensModel]:
    """Weights saved and reloaded through the Auto class ``ml.load`` uses; the processor built directly."""
    torch.set_num_threads(1)
    return {
        model_type: ml.LensModel.wrap(
            AutoModelForImageTextToText.from_pretrained(path), tiny_qwen2_vl(model_type=model_type)[1]
        )
        for model_type, path in saved.items()
    }


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_loads_with_the_merged_grid(models, model_type, probe):
    """A 40 x 50 image is resized to 24 x 32 px (within 32 x 32 px), 6 x 8 patches of 4 px merged 2 x 2."""
    model = models[model_type]
    assert model.adapter.architecture == model_type and type(model.hf_model).__name__ == CLASSES[model_type]
    assert model.adapter.language_model is model.hf_model.model.language_model
    assert (model.adapter.spec.mlp_out, model.num_layers, model.adapter.mrope) == ("down_proj", 5, True)
    encoded = probe.encode(model)
    start, end = encoded.image_span
    layout = encoded.patch_layout
    assert (encoded.tokens[start - 1], encoded.tokens[end]) == ("<|vision_start|>", "<|vision_end|>")
    assert set(encoded.tokens[start:end]) == {"<image>"}
    assert encoded.model_inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert (layout.rows, layout.cols, end - start) == (3, 4, 12)
    assert encoded.labels[start:end] == [f"<img {r},{c}>" for r in range(3) for c in range(4)]


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_the_decoder_gets_the_models_3d_positions(models, model_type, probe):
    """``decoder_call`` returns the position ids the wrapper computes (image tokens share a temporal
    id and count rows and columns); the decoder on them reproduces the full forward, the decoder's
    own 1-D default would not, and a call without them is refused rather than silently wrong."""
    model = models[model_type]
    encoded = probe.encode(model)
    embeds, positions, _pattern, _deepstack = model.decoder_call(encoded.model_inputs)
    inputs = encoded.model_inputs
    expected, _ = model.hf_model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    assert torch.equal(positions, expected)
    start, end = encoded.image_span
    assert positions[:, 0, start:end].tolist() == [
        [start] * 12,
        [start + r for r in range(3) for _ in range(4)],
        [start + c for _ in range(3) for c in range(4)],
    ]
    with torch.no_grad():
        full = model.hf_model(**inputs).logits[0, -1].float()
        ours = model.decoder_logits(embeds, positions=positions)[0]
        default = model.adapter.lm_head(model.adapter.language_model(inputs_embeds=embeds).last_hidden_state[0, -1])
    assert (ours - full).abs().max() <= 1e-5
    assert (default.float() - full).abs().max() > 1e-2
    with pytest.raises(UnsupportedModelError, match="M-RoPE position ids"):
        model.decoder_logits(embeds)


@pytest.mark.parametrize("model_type,corruption,site,window,mode", TRACE_CASES)
def test_fast_trace_equals_reference(models, probe, model_type, corruption, site, window, mode):
    assert_trace_equals_oracle(models[model_type], probe, CORRUPTIONS[corruption], site, window, mode)


def test_a_longer_phrase_before_the_image_shifts_its_positions(models):
    """With the question before the image, replacing a phrase by a longer one moves the image's
    M-RoPE ids (all three axes) by the length difference; both plans still equal the oracle."""
    model = models["qwen2_vl"]
    template = "<|im_start|>user {question} <|vision_start|><image><|vision_end|><|im_end|><|im_start|>assistant"
    image = Image.fromarray((np.random.default_rng(1).random((16, 24, 3)) * 255).astype("uint8"))
    probe = ml.Probe(image, "which continent is this country in", [ml.visual("this country")], template=template)
    session = ml.tracing.TraceSession(model, probe, ml.replace("this country", "the famous city"), warn=False)
    executor = session.executor
    start, end = session.encoded.image_span
    assert torch.equal(
        executor.corrupted_positions[..., start + 1 : end + 1], executor.clean_positions[..., start:end] + 1
    )
    assert_trace_equals_oracle(model, probe, ml.replace("this country", "the famous city"), "hidden", 1, "paper")


@pytest.mark.parametrize(
    "model_type,site,block", [("qwen2_vl", "mlp", 1), ("qwen2_vl", "hidden", 2), ("qwen2_5_vl", "attn", 1)]
)
def test_patch_sweeps_equal_reference(models, probe, model_type, site, block):
    """Noise of 0.2 sigma: at 0.5 on all 12 tokens the tiny model's answer is gone whichever patch is restored."""
    assert_sweeps_equal_oracle(models[model_type], probe, site, block, scale=0.2)


@pytest.mark.parametrize("model_type,target", [("qwen2_vl", "visual"), ("qwen2_vl", "last"), ("qwen2_5_vl", "visual")])
def test_contributions_equal_eager_direct(models, saved, probe, model_type, target):
    assert_contributions_equal_eager(models[model_type], saved[model_type], probe, target)


def test_knockout_equals_token_deletion(models, probe):
    """Cutting every edge from some image tokens at every layer == deleting them while the other
    tokens keep their 3-D position ids (rotary attention reads only relative positions)."""
    model = models["qwen2_vl"]
    encoded = probe.encode(model)
    start, end = encoded.image_span
    removed = [start + 1, start + 2, end - 1]
    result = ml.tracing.knockout(model, encoded, removed)
    embeds, positions, _pattern, _deepstack = model.decoder_call(encoded.model_inputs)
    keep = [i for i in range(encoded.length) if i not in removed]
    with torch.no_grad():
        out = model.hf_model.model.language_model(inputs_embeds=embeds[:, keep], position_ids=positions[..., keep])
        logits = model.hf_model.lm_head(out.last_hidden_state[:, -1]).float()
    assert abs(result.knocked_prob - float(torch.softmax(logits, -1)[0, result.target_id])) <= 1e-5
    assert abs(result.drop) > 1e-4  # the knock-out did something


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_multedit_edits_the_dense_mlp_and_undoes(models, model_type, probe):
    """The edit's δ is optimised on the decoder with the 3-D positions; tenfold (Qwen2.5-VL reaches 95x)."""
    assert_edit_raises_and_undoes(models[model_type], probe, factor=10)


@pytest.fixture(scope="module", params=sorted(CLASSES))
def isolated(request) -> ml.LensModel:
    """The tiny model with its vision tower's attention output zeroed: patches do not mix."""
    hf_model, processor = tiny_qwen2_vl(model_type=request.param)
    with torch.no_grad():
        for block in hf_model.model.visual.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    return ml.LensModel.wrap(hf_model, processor)


@pytest.mark.parametrize(
    "height,width,bright", [(24, 32, (0, 0)), (24, 32, (2, 1)), (32, 16, (3, 1)), (16, 32, (1, 2))]
)
def test_bright_patch_lands_on_its_merged_token(isolated, height, width, bright):
    """Merged patches are 8 px (4 px patches, merged 2 x 2) and images of these sizes are not
    resized: the grid is the image's (3 x 4, 4 x 2, 2 x 4), lighting one 8 px block changes exactly
    the token the layout names for it, and that token's M-RoPE height and width ids are its row and
    column."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    dark = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    lit = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    start, end = lit.image_span
    lit_embeds, positions, _pattern, _deepstack = isolated.decoder_call(lit.model_inputs)
    moved = (isolated.decoder_inputs(dark.model_inputs)[0] - lit_embeds[0])[start:end].abs().amax(-1)
    layout = lit.patch_layout
    assert (layout.rows, layout.cols, end - start) == (height // 8, width // 8, height * width // 64)
    changed = [i for i in range(end - start) if moved[i] > 0.1 * moved.max()]
    assert changed == [layout.token_of_patch(*bright)]
    assert layout.labels[changed[0]] == f"<img {bright[0]},{bright[1]}>"
    assert (positions[1:, 0, start + changed[0]] - start).tolist() == list(bright)
