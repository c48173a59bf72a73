"""ViP-LLaVA (several vision layers concatenated, CLS dropped): loads, traces equal to the oracle,
and its square patch grid maps a token to the right patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_check import assert_trace_equals_oracle
from PIL import Image

import mllm_lens as ml
from mllm_lens.testing import tiny_vipllava

CORRUPTIONS = {
    "noise": ml.noise("this country"),
    "image": ml.image_noise(),
    "replace": ml.replace("this country", "the famous city"),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ml.LensModel:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("vipllava")
    tiny_vipllava(path)
    return ml.load(path)


def test_loads_with_the_llava_layout(model):
    assert model.adapter.architecture == "vipllava"
    assert type(model.hf_model).__name__ == "VipLlavaForConditionalGeneration"
    assert (model.adapter.spec.mlp_out, model.num_layers) == ("down_proj", 5)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("site", ["hidden", "mlp", "attn"])
@pytest.mark.parametrize("window,mode", [(1, "paper"), (3, "rome")])
def test_fast_trace_equals_reference(model, probe, corruption, site, window, mode):
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


@pytest.mark.parametrize("bright", [(0, 0), (1, 2), (3, 1)])
def test_bright_patch_lands_on_its_token(bright):
    """With the vision tower's attention output zeroed, patches do not mix: lighting one patch
    changes exactly the visual token the layout names for it, through every concatenated layer."""
    hf_model, processor = tiny_vipllava()
    with torch.no_grad():
        for name, module in hf_model.named_modules():
            if "vision" in name and name.endswith("self_attn.out_proj"):
                module.weight.zero_()
                module.bias.zero_()
    model = ml.LensModel.wrap(hf_model, processor)

    def image(lit: bool) -> Image.Image:
        pixels = np.full((32, 32, 3), 20, dtype=np.uint8)
        if lit:
            pixels[bright[0] * 8 : (bright[0] + 1) * 8, bright[1] * 8 : (bright[1] + 1) * 8] = 240
        return Image.fromarray(pixels)

    dark = ml.Probe(image(False), "which country is this").encode(model)
    lit = ml.Probe(image(True), "which country is this").encode(model)
    start, end = lit.image_span
    change = (model.decoder_inputs(dark.model_inputs)[0] - model.decoder_inputs(lit.model_inputs)[0])[start:end]
    moved = change.abs().amax(-1)
    changed = [i for i in range(end - start) if moved[i] > 0.1 * moved.max()]
    layout = lit.patch_layout
    assert (layout.rows, layout.cols, end - start) == (4, 4, 16)
    assert changed == [layout.token_of_patch(*bright)]
    assert layout.labels[changed[0]] == f"<img {bright[0]},{bright[1]}>"
