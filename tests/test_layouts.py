"""The base-grid patch mapping: a single bright patch lands on the visual token the layout names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mllm_lens as ml
from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.layouts import PatchLayout, square_grid_layout
from mllm_lens.testing import tiny_llava, tiny_llava_next, tiny_llava_phi
from mllm_lens.tracing.patches import patch_blocks

BUILDERS = {"llava": tiny_llava, "llava_phi": tiny_llava_phi, "llava_next": tiny_llava_next}


@pytest.fixture(scope="module")
def isolated() -> dict[str, ml.LensModel]:
    """Tiny models whose vision towers do not mix patches (attention output projections zeroed),
    so a visual token changes only when its own patch changes."""
    out = {}
    for name, build in BUILDERS.items():
        model, processor = build()
        with torch.no_grad():
            for module_name, module in model.named_modules():
                if "vision" in module_name and module_name.endswith("self_attn.out_proj"):
                    module.weight.zero_()
                    module.bias.zero_()
        out[name] = ml.LensModel.wrap(model, processor)
    return out


def _image(size: int, bright: tuple[int, int] | None, cell: int) -> Image.Image:
    pixels = np.full((size, size, 3), 20, dtype=np.uint8)
    if bright is not None:
        r, c = bright
        pixels[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 240
    return Image.fromarray(pixels)


def _changed_tokens(model: ml.LensModel, size: int, bright: tuple[int, int], cell: int):
    question = "which country is this"
    dark = ml.Probe(_image(size, None, cell), question).encode(model)
    lit = ml.Probe(_image(size, bright, cell), question).encode(model)
    a = model.decoder_inputs(dark.model_inputs)[0]
    b = model.decoder_inputs(lit.model_inputs)[0]
    start, end = lit.image_span
    change = (a[start:end] - b[start:end]).abs().amax(-1)
    moved = change > 0.1 * change.max()  # resizing blurs a patch edge into its neighbours a little
    return lit, [i for i in range(end - start) if moved[i]]


@pytest.mark.parametrize("arch", ["llava", "llava_phi"])
@pytest.mark.parametrize("bright", [(0, 0), (1, 2), (3, 1)])
def test_square_grid_bright_patch(isolated, arch, bright):
    model = isolated[arch]  # 32 px image, 8 px patches: 4 x 4 grid, CLS dropped
    encoded, changed = _changed_tokens(model, 32, bright, 8)
    layout = encoded.patch_layout
    assert (layout.rows, layout.cols) == (4, 4)
    assert changed == [layout.token_of_patch(*bright)]
    assert layout.labels[changed[0]] == f"<img {bright[0]},{bright[1]}>"


@pytest.mark.parametrize("bright", [(0, 1), (1, 0)])
def test_llava_next_bright_patch(isolated, bright):
    """Base grid 2 x 2 (a 16 px view of the 32 px image); high-res tiles 4 x 4 over the full image."""
    model = isolated["llava_next"]
    encoded, changed = _changed_tokens(model, 32, bright, 16)  # one bright quadrant of the image
    layout = encoded.patch_layout
    base = [i for i in changed if layout.grid_index[i] >= 0]
    assert base == [layout.token_of_patch(*bright)]
    tiles = {layout.labels[i] for i in changed if layout.grid_index[i] < 0}
    r, c = bright  # the quadrant covers high-res patches rows 2r..2r+1, cols 2c..2c+1
    assert tiles == {f"<img+ {y},{x}>" for y in (2 * r, 2 * r + 1) for x in (2 * c, 2 * c + 1)}


def test_cls_kept_variant():
    class Vision:
        image_size, patch_size = 32, 8

    class Config:
        vision_config = Vision()

    class Model:
        config = Config()

    layout = square_grid_layout(Model(), {}, 17)
    assert layout.labels[0] == "<img cls>" and layout.grid_index[0] == -1
    assert layout.token_of_patch(0, 0) == 1 and layout.token_of_patch(3, 3) == 16


def test_unmappable_layouts_are_refused(isolated):
    model = isolated["llava"]
    with pytest.raises(UnsupportedModelError, match="patch grid"):
        square_grid_layout(model.hf_model, {}, 15)
    encoded = ml.Probe(_image(32, None, 8), "which country is this").encode(model)
    encoded.patch_layout = PatchLayout(labels=["?"] * 16, rows=4, cols=4, grid_index=[-1] * 16)
    with pytest.raises(UnsupportedModelError, match="base grid"):
        patch_blocks(encoded)
    with pytest.raises(IndexError):
        PatchLayout(labels=["a"], rows=1, cols=1, grid_index=[0]).token_of_patch(1, 0)
