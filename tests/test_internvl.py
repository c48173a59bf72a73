"""InternVL (tiles + thumbnail between <img> and </img>, 2 x 2 pixel shuffle, Qwen2 backbone with
1-D positions): loads, traces, patch sweeps and attention contributions equal their oracles,
MultEdit edits, and the layout maps each token to its tile, the thumbnail being the base grid."""

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
from mllm_lens.testing.tiny_internvl import tiny_internvl

CORRUPTIONS = FAMILY_CORRUPTIONS


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("internvl")
    tiny_internvl(path)
    return str(path)


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    """Weights saved and reloaded as ``ml.load`` does; the processor is built directly (its video
    half needs torchvision, so ``AutoProcessor`` cannot reload it here)."""
    torch.set_num_threads(1)
    _, processor = tiny_internvl()
    return ml.LensModel.wrap(AutoModelForImageTextToText.from_pretrained(saved), processor)


def test_loads_with_the_tile_layout(model, probe):
    """A 40 x 50 image is cut into 2 x 2 tiles of 16 px plus a thumbnail, 2 x 2 tokens each."""
    assert model.adapter.architecture == "internvl"
    assert type(model.hf_model).__name__ == "InternVLForConditionalGeneration"
    assert (model.adapter.backbone, model.adapter.spec.mlp_out, model.num_layers) == ("qwen2", "down_proj", 5)
    encoded = probe.encode(model)
    start, end = encoded.image_span
    layout = encoded.patch_layout
    assert (encoded.tokens[start], encoded.tokens[end - 1]) == ("<img>", "</img>")
    assert encoded.labels[start:end] == layout.labels
    assert (layout.rows, layout.cols, end - start) == (2, 2, 5 * 4 + 2)
    assert layout.labels[5:9] == ["<img tile 1 0,0>", "<img tile 1 0,1>", "<img tile 1 1,0>", "<img tile 1 1,1>"]
    assert layout.labels[-5:] == ["<img 0,0>", "<img 0,1>", "<img 1,0>", "<img 1,1>", "<img end>"]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("site", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("window,mode", [(1, "paper"), (3, "rome")])
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.mark.parametrize("site,block", [("mlp", 1), ("hidden", 2)])
def test_patch_sweeps_equal_reference(model, probe, site, block):
    assert_sweeps_equal_oracle(model, probe, site, block)


@pytest.mark.parametrize("target", ["visual", "last"])
def test_contributions_equal_eager_direct(model, saved, probe, target):
    assert_contributions_equal_eager(model, saved, probe, target)


def test_multedit_edits_the_dense_mlp_and_undoes(model, probe):
    """No fact in a random model: the edit at the last token raises p(new answer) tenfold and undoes bit for bit."""
    assert_edit_raises_and_undoes(model, probe, factor=10)


@pytest.fixture(scope="module")
def isolated() -> ml.LensModel:
    """The tiny InternVL with its vision tower's attention output zeroed: patches do not mix."""
    hf_model, processor = tiny_internvl()
    with torch.no_grad():
        for name, module in hf_model.named_modules():
            if name.startswith("model.vision_tower") and name.endswith("attention.projection_layer"):
                module.weight.zero_()
                module.bias.zero_()
    return ml.LensModel.wrap(hf_model, processor)


@pytest.mark.parametrize(
    "height,width,bright,tiles_wide",
    [(32, 32, (0, 0), 2), (32, 32, (2, 3), 2), (16, 32, (1, 2), 2), (32, 16, (3, 0), 1)],
)
def test_bright_patch_lands_on_its_tile_and_thumbnail_tokens(isolated, height, width, bright, tiles_wide):
    """Tiles are 16 px (4 px patches shuffled 2 x 2: 8 px tokens), in rows of ``tiles_wide``: lighting
    one 8 px block changes exactly the token of its tile, the thumbnail token over it moves most
    among the thumbnail's, and <img> / </img> do not move."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    dark = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    lit = ml.Probe(Image.fromarray(pixels), "which country is this").encode(isolated)
    start, end = lit.image_span
    change = (isolated.decoder_inputs(dark.model_inputs)[0] - isolated.decoder_inputs(lit.model_inputs)[0])[start:end]
    moved = change.abs().amax(-1)
    layout = lit.patch_layout
    tiles = [i for i, label in enumerate(layout.labels) if label.startswith("<img tile")]
    assert len(tiles) == height * width // 64
    changed = [layout.labels[i] for i in tiles if moved[i] > 0.1 * moved.max()]
    r, c = bright
    assert changed == [f"<img tile {r // 2 * tiles_wide + c // 2} {r % 2},{c % 2}>"]
    thumbnail = [i for i, g in enumerate(layout.grid_index) if g >= 0]
    top = max(thumbnail, key=lambda i: float(moved[i]))
    assert top == layout.token_of_patch(r * 16 // height, c * 16 // width)
    assert moved[0] == moved[-1] == 0
