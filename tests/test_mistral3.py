"""Mistral 3 (Pixtral tower with 2-D RoPE, 2 x 2 patch merger, Mistral backbone with 1-D positions):
loads, traces equal to the oracle, and its layout maps each merged token to its place in the
picture, with the [IMG_BREAK] / [IMG_END] tokens labelled as markers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_check import FAMILY_CORRUPTIONS, assert_trace_equals_oracle
from PIL import Image
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.testing import tiny_mistral3

CORRUPTIONS = FAMILY_CORRUPTIONS


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ml.LensModel:
    """Weights saved and reloaded as ``ml.load`` does; the processor is the stand-in built
    directly (transformers' ``PixtralProcessor`` needs torchvision)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("mistral3")
    _, processor = tiny_mistral3(path)
    return ml.LensModel.wrap(AutoModelForImageTextToText.from_pretrained(path), processor)


def test_loads_with_the_pixtral_layout(model, probe):
    assert model.adapter.architecture == "mistral3"
    assert type(model.hf_model).__name__ == "Mistral3ForConditionalGeneration"
    assert (model.adapter.backbone, model.adapter.spec.mlp_out, model.num_layers) == ("mistral", "down_proj", 5)
    encoded = probe.encode(model)
    start, end = encoded.image_span
    assert encoded.tokens[start - 1] == "[INST]" and encoded.tokens[end - 1] == "[IMG_END]"
    assert encoded.labels[start:end] == encoded.patch_layout.labels


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("site", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("window,mode", [(1, "paper"), (3, "rome")])
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.fixture(scope="module")
def isolated() -> ml.LensModel:
    """The tiny Mistral 3 with its vision tower's attention output zeroed: patches do not mix
    (the 2-D RoPE then has nothing to rotate into a neighbour)."""
    hf_model, processor = tiny_mistral3()
    with torch.no_grad():
        for layer in hf_model.model.vision_tower.transformer.layers:
            layer.attention.o_proj.weight.zero_()
    return ml.LensModel.wrap(hf_model, processor)


@pytest.mark.parametrize(
    "height,width,bright",
    [(32, 32, (0, 0)), (32, 32, (2, 3)), (16, 32, (1, 2)), (32, 16, (3, 0))],
)
def test_bright_patch_lands_on_its_merged_token(isolated, height, width, bright):
    """Merged patches are 8 px (4 px patches, merged 2 x 2): lighting one 8 px block changes exactly
    the token the layout names for it, the grid follows the image's shape, and every row ends in a
    break token (the last in an end token) that no pixel moves."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    dark = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    lit = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    start, end = lit.image_span
    change = (isolated.decoder_inputs(dark.model_inputs)[0] - isolated.decoder_inputs(lit.model_inputs)[0])[start:end]
    moved = change.abs().amax(-1)
    changed = [i for i in range(end - start) if moved[i] > 0.1 * moved.max()]
    layout = lit.patch_layout
    rows, cols = height // 8, width // 8
    assert (layout.rows, layout.cols, end - start) == (rows, cols, rows * (cols + 1))
    assert changed == [layout.token_of_patch(*bright)]
    assert layout.labels[changed[0]] == f"<img {bright[0]},{bright[1]}>"
    markers = [i for i, g in enumerate(layout.grid_index) if g < 0]
    assert markers == [r * (cols + 1) + cols for r in range(rows)]
    assert [lit.tokens[start + i] for i in markers] == ["[IMG_BREAK]"] * (rows - 1) + ["[IMG_END]"]
    assert [layout.labels[i] for i in markers] == ["<img break>"] * (rows - 1) + ["<img end>"]
