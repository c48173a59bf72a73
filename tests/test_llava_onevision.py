"""LLaVA-OneVision (SigLIP tower, anyres-max tiles + newline tokens, Qwen2 backbone): loads, traces
equal to the oracle, and its layout maps base and tile tokens to the right place in the picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_check import FAMILY_CORRUPTIONS, assert_trace_equals_oracle
from PIL import Image
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.testing import tiny_llava_onevision

CORRUPTIONS = FAMILY_CORRUPTIONS


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ml.LensModel:
    """Weights saved and reloaded as ``ml.load`` does; the processor is built directly (its
    video half needs torchvision, so ``AutoProcessor`` cannot reload it here)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("llava_onevision")
    _, processor = tiny_llava_onevision(path)
    return ml.LensModel.wrap(AutoModelForImageTextToText.from_pretrained(path), processor)


def test_loads_with_the_onevision_layout(model):
    assert model.adapter.architecture == "llava_onevision"
    assert type(model.hf_model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert (model.adapter.backbone, model.adapter.spec.mlp_out, model.num_layers) == ("qwen2", "down_proj", 5)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("site", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("window,mode", [(1, "paper"), (3, "rome")])
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.fixture(scope="module")
def isolated() -> ml.LensModel:
    """The tiny OneVision (4 px patches) with its vision tower's attention output zeroed: patches do not mix."""
    hf_model, processor = tiny_llava_onevision(patch_size=4)
    with torch.no_grad():
        for name, module in hf_model.named_modules():
            if "vision" in name and name.endswith("self_attn.out_proj"):
                module.weight.zero_()
                module.bias.zero_()
    return ml.LensModel.wrap(hf_model, processor)


def _image(bright: tuple[int, int] | None) -> Image.Image:
    pixels = np.full((32, 32, 3), 20, dtype=np.uint8)
    if bright is not None:
        pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
    return Image.fromarray(pixels)


@pytest.mark.parametrize("bright", [(0, 0), (1, 2), (3, 1)])
def test_bright_patch_lands_on_its_tokens(isolated, bright):
    """A 32 px image: base view 16 px (4 x 4 patches of 8 px), tiles 2 x 2 of 16 px (8 x 8 patches
    of 4 px) with a newline after each row. Lighting one 8 px block changes exactly its base token
    and the four high-res tokens under it, never a newline."""
    dark = ml.Probe(_image(None), "which country is this").encode(isolated)
    lit = ml.Probe(_image(bright), "which country is this").encode(isolated)
    start, end = lit.image_span
    change = (isolated.decoder_inputs(dark.model_inputs)[0] - isolated.decoder_inputs(lit.model_inputs)[0])[start:end]
    moved = change.abs().amax(-1)
    changed = [i for i in range(end - start) if moved[i] > 0.3 * moved.max()]  # bicubic resizing leaks ~0.1
    layout = lit.patch_layout
    assert (layout.rows, layout.cols, end - start) == (4, 4, 16 + 8 * 8 + 8)
    assert layout.labels.count("<img \\n>") == 8 and layout.labels[-1] == "<img \\n>"
    assert [i for i in changed if layout.grid_index[i] >= 0] == [layout.token_of_patch(*bright)]
    r, c = bright
    tiles = {layout.labels[i] for i in changed if layout.grid_index[i] < 0}
    assert tiles == {f"<img+ {y},{x}>" for y in (2 * r, 2 * r + 1) for x in (2 * c, 2 * c + 1)}


def test_anyres_max_shrinks_the_tiles_and_the_layout_follows(isolated, monkeypatch):
    """With anyres_max_1 the 8 x 8 tile grid is shrunk to 4 x 4 (bilinear): the layout still
    counts the tokens the processor inserted, and its tile tokens spread over the whole image."""
    monkeypatch.setattr(isolated.hf_model.config, "vision_aspect_ratio", "anyres_max_1")
    monkeypatch.setattr(isolated.processor, "vision_aspect_ratio", "anyres_max_1")
    encoded = ml.Probe(_image(None), "which country is this").encode(isolated)
    labels = encoded.patch_layout.labels
    tiles = [tuple(int(v) for v in label[6:-1].split(",")) for label in labels if label.startswith("<img+")]
    assert (len(labels), len(tiles), labels.count("<img \\n>")) == (16 + 16 + 4, 16, 4)
    assert {y for y, _ in tiles} == {x for _, x in tiles} == {0, 2, 4, 6}
