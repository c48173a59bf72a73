"""Idefics3 and SmolVLM (tiles + global view, 2 x 2 pixel shuffle, Llama backbone with 1-D positions):
load through the Auto classes, traces, patch sweeps and attention contributions equal their
oracles, MultEdit edits, and the layout maps each token to its tile and place in the picture with
the tile markers labelled as markers."""

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
from transformers import Idefics3Processor
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

import mllm_lens as ml
from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.layouts import idefics3_layout
from mllm_lens.testing.tiny_idefics3 import tiny_idefics3

CORRUPTIONS = FAMILY_CORRUPTIONS
CLASSES = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def saved(request, tmp_path_factory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp(request.param)
    tiny_idefics3(path, model_type=request.param)
    return request.param, str(path)


@pytest.fixture(scope="module")
def model(saved) -> ml.LensModel:
    """Loaded back with ``ml.load`` (the Auto classes; the processor is ``Idefics3Processor`` for both)."""
    torch.set_num_threads(1)
    return ml.load(saved[1])


def test_loads_with_the_tile_layout(model, saved, probe):
    """A 40 x 50 image is resized to 32 px and cut into 2 x 2 tiles of 16 px (2 x 2 tokens each)."""
    assert model.adapter.architecture == saved[0] and type(model.hf_model).__name__ == CLASSES[saved[0]]
    assert model.adapter.language_model is model.hf_model.model.text_model
    assert (model.adapter.backbone, model.adapter.spec.mlp_out, model.num_layers) == ("llama", "down_proj", 5)
    encoded = probe.encode(model)
    start, end = encoded.image_span
    layout = encoded.patch_layout
    assert encoded.tokens[start] == encoded.tokens[end - 1] == "<fake_token_around_image>"
    assert encoded.labels[start:end] == layout.labels
    assert (layout.rows, layout.cols, end - start) == (4, 4, 5 * (2 + 4) + 3 + 1)
    tags = [i for i, t in enumerate(encoded.tokens[start:end]) if t.startswith("<row_")]
    assert [encoded.tokens[start + i] for i in tags] == [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]
    assert [layout.labels[i] for i in tags] == [f"<img tile {r},{c}>" for r in (0, 1) for c in (0, 1)]
    assert layout.labels[tags[1] + 1 : tags[1] + 5] == ["<img 0,2>", "<img 0,3>", "<img 1,2>", "<img 1,3>"]
    newlines = [i for i, t in enumerate(encoded.tokens[start:end]) if t == "\n"]
    assert len(newlines) == 3 and {layout.labels[i] for i in newlines} == {"<img \\n>"}
    assert layout.labels[-6:] == ["<img global>"] + [f"<img global {r},{c}>" for r in (0, 1) for c in (0, 1)] + [
        "<img around>"
    ]


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
    assert_contributions_equal_eager(model, saved[1], probe, target)


def test_multedit_edits_the_dense_mlp_and_undoes(model, probe):
    """The edit at the last token raises p(new answer) a hundredfold and undoes bit for bit."""
    assert_edit_raises_and_undoes(model, probe, factor=100)


@pytest.fixture(scope="module")
def isolated(saved) -> ml.LensModel:
    """The tiny model with its vision tower's attention output zeroed: patches do not mix."""
    hf_model, processor = tiny_idefics3(model_type=saved[0])
    with torch.no_grad():
        for layer in hf_model.model.vision_model.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    return ml.LensModel.wrap(hf_model, processor)


def _moved(model: ml.LensModel, height: int, width: int, bright: tuple[int, int]):
    """The lit probe and how far each of its image span's embeddings moved when one 8 px block lit up."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    dark = ml.Probe(Image.fromarray(pixels), "which country is this").encode(model)
    pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    lit = ml.Probe(Image.fromarray(pixels), "which country is this").encode(model)
    start, end = lit.image_span
    change = (model.decoder_inputs(dark.model_inputs)[0] - model.decoder_inputs(lit.model_inputs)[0])[start:end]
    return lit, change.abs().amax(-1)


@pytest.mark.parametrize(
    "height,width,bright",
    [(32, 32, (0, 0)), (32, 32, (2, 3)), (16, 32, (1, 2)), (32, 16, (3, 0))],
)
def test_bright_patch_lands_on_its_tile_token(isolated, height, width, bright):
    """Tiles are 16 px, their tokens 8 px (4 px patches, shuffled 2 x 2): lighting one 8 px block
    changes exactly the tile token the layout names for it, the global-view token over it moves
    most among the global view's, and no marker moves. Tiles follow the image's shape (1 x 2, 2 x 1)."""
    lit, moved = _moved(isolated, height, width, bright)
    layout = lit.patch_layout
    assert (layout.rows, layout.cols) == (height // 8, width // 8)
    in_tiles = [i for i, g in enumerate(layout.grid_index) if g >= 0]
    changed = [i for i in in_tiles if moved[i] > 0.1 * moved.max()]
    assert changed == [layout.token_of_patch(*bright)]
    assert layout.labels[changed[0]] == f"<img {bright[0]},{bright[1]}>"
    views = [i for i, label in enumerate(layout.labels) if label.startswith("<img global ")]
    top = max(views, key=lambda i: float(moved[i]))
    assert layout.labels[top] == f"<img global {bright[0] * 16 // height},{bright[1] * 16 // width}>"
    markers = [i for i in range(len(layout.labels)) if i not in in_tiles and i not in views]
    assert not moved[markers].any()


def test_an_unsplit_image_is_its_global_view(isolated, monkeypatch):
    """Without splitting, the prompt has the global view only: it is the base grid."""
    monkeypatch.setattr(isolated.processor.image_processor, "do_image_splitting", False)
    lit, moved = _moved(isolated, 32, 32, (3, 1))
    layout = lit.patch_layout
    assert (layout.rows, layout.cols, len(layout.labels)) == (2, 2, 2 + 4 + 1)
    assert layout.labels == ["<img around>", "<img global>", "<img 0,0>", "<img 0,1>", "<img 1,0>", "<img 1,1>"] + [
        "<img around>"
    ]
    assert int(moved.argmax()) == layout.token_of_patch(1, 0)


@pytest.mark.parametrize("rows,cols", [(0, 0), (1, 3), (2, 1), (3, 2)])
def test_the_stand_in_expands_images_as_smolvlm_does(rows, cols):
    """SmolVLM's tiny model uses ``Idefics3Processor`` (``SmolVLMProcessor`` needs num2words and
    torchvision): its image expansion is SmolVLM's, token for token."""
    _, processor = tiny_idefics3(model_type="smolvlm")
    ours = Idefics3Processor.replace_image_token(processor, {"rows": [[rows]], "cols": [[cols]]}, 0)
    theirs = get_image_prompt_string(rows, cols, 4, "<fake_token_around_image>", "<image>", "<global-img>")
    assert ours == theirs


def test_a_tokenizer_without_newlines_is_refused(isolated, probe):
    """Rows of tiles are told apart by the newlines that end them; without them the layout refuses."""
    encoded = probe.encode(isolated)
    newline = isolated.tokenizer.convert_tokens_to_ids("\n")
    ids = encoded.model_inputs["input_ids"]
    kept = ids[ids != newline][None]
    with pytest.raises(UnsupportedModelError, match="drops the newlines that end each row of tiles"):
        idefics3_layout(isolated.hf_model, {"input_ids": kept}, encoded.image_span[1] - encoded.image_span[0] - 3)
