"""Where each visual token sits in the image: patch grids per architecture.

A :class:`PatchLayout` maps the i-th image token of the prompt to a label (``<img r,c>``) and,
for tokens of the base patch grid, to its (row, col). LLaVA-1.5 uses a square grid in
row-major order after the CLS token is dropped; LLaVA-NeXT and LLaVA-OneVision add
high-resolution tiles whose rows end in an image-newline token, and their layout is read off the
model's own packing code. Mistral 3 (Pixtral) closes each row of merged patches with a break
token. Marker tokens (newline, break, end) are labelled as such, outside the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from mllm_lens.errors import UnsupportedModelError


@dataclass(frozen=True)
class PatchLayout:
    """Labels and grid coordinates of a prompt's image tokens.

    ``rows``/``cols`` is the base patch grid; ``grid_index[i]`` is the row-major index of image
    token i in that grid, or -1 for tokens outside it (CLS, high-res tiles, newlines).
    """

    labels: list[str]
    rows: int
    cols: int
    grid_index: list[int] = field(default_factory=list)

    def token_of_patch(self, row: int, col: int) -> int:
        """Index (among image tokens) of the base-grid patch at (row, col)."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"patch ({row}, {col}) outside the {self.rows}x{self.cols} grid")
        return self.grid_index.index(row * self.cols + col)


def _vision_grid(model: PreTrainedModel) -> int:
    vision = model.config.vision_config
    return int(vision.image_size) // int(vision.patch_size)


def square_grid_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """LLaVA-1.5: a square grid, row-major; a leading CLS token when the strategy keeps it."""
    side = _vision_grid(model)
    if n_tokens == side * side + 1:
        extra = ["<img cls>"]
    elif n_tokens == side * side:
        extra = []
    else:
        root = math.isqrt(n_tokens)
        if root * root != n_tokens:
            raise UnsupportedModelError(
                f"{n_tokens} image tokens do not form the {side}x{side} patch grid of the vision tower"
            )
        side = root
        extra = []
    labels = extra + [f"<img {r},{c}>" for r in range(side) for c in range(side)]
    grid_index = [-1] * len(extra) + list(range(side * side))
    return PatchLayout(labels=labels, rows=side, cols=side, grid_index=grid_index)


def _anyres_layout(
    model: PreTrainedModel, model_inputs: dict, n_tokens: int, pack: Callable[[list, Any, torch.Tensor], Any]
) -> PatchLayout:
    """Base grid, then unpadded high-res tiles with a newline token per row (LLaVA-NeXT, OneVision).

    The layout is computed by running the model's own packing code (``pack(features, image_sizes,
    newline)``) on features that carry their (kind, row, col) coordinates, so it follows the
    installed transformers exactly. Where the packing shrinks the tiles bilinearly (OneVision's
    anyres-max), a token's coordinates are those of the nearest source patch.
    """
    family = model.config.model_type
    image_sizes = model_inputs.get("image_sizes")
    if image_sizes is None:
        raise UnsupportedModelError(f"{family} layout needs the processor's 'image_sizes' input")
    side = _vision_grid(model)
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    tiles_h, tiles_w = get_anyres_image_grid_shape(
        image_sizes[0].tolist(), model.config.image_grid_pinpoints, model.config.vision_config.image_size
    )
    n_tiles = 1 + tiles_h * tiles_w
    coords = torch.zeros(n_tiles, side * side, 3)
    rr, cc = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords[0, :, 1] = rr.flatten().float()
    coords[0, :, 2] = cc.flatten().float()
    for tile in range(1, n_tiles):
        ty, tx = divmod(tile - 1, tiles_w)
        coords[tile, :, 0] = 1
        coords[tile, :, 1] = (rr + ty * side).flatten().float()
        coords[tile, :, 2] = (cc + tx * side).flatten().float()
    packed = pack([coords], image_sizes, torch.tensor([2.0, -1.0, -1.0]))[0][0]
    if packed.shape[0] != n_tokens:
        raise UnsupportedModelError(
            f"{family} layout has {packed.shape[0]} tokens but the prompt has {n_tokens} image tokens"
        )
    labels, grid_index = [], []
    for kind, row, col in packed.round().long().tolist():
        if kind == 0:
            labels.append(f"<img {row},{col}>")
            grid_index.append(row * side + col)
        elif kind == 1:
            labels.append(f"<img+ {row},{col}>")
            grid_index.append(-1)
        else:
            labels.append("<img \\n>")
            grid_index.append(-1)
    return PatchLayout(labels=labels, rows=side, cols=side, grid_index=grid_index)


def llava_next_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """LLaVA-NeXT: base grid, then unpadded high-res tiles, a newline token ending each row."""
    inner: Any = model.model  # the wrapper's LlavaNextModel (pack_image_features)
    strategy = model.config.vision_feature_select_strategy

    def pack(features: list, image_sizes: Any, newline: torch.Tensor) -> Any:
        return inner.pack_image_features(features, image_sizes, strategy, image_newline=newline)

    return _anyres_layout(model, model_inputs, n_tokens, pack)


def llava_onevision_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """LLaVA-OneVision: as LLaVA-NeXT, the tiles shrunk to at most anyres-max-N tiles' worth."""
    inner: Any = model.model  # the wrapper's LlavaOnevisionModel (pack_image_features)
    ratio = model.config.vision_aspect_ratio

    def pack(features: list, image_sizes: Any, newline: torch.Tensor) -> Any:
        return inner.pack_image_features(features, image_sizes, image_newline=newline, vision_aspect_ratio=ratio)

    return _anyres_layout(model, model_inputs, n_tokens, pack)


def pixtral_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """Mistral 3 (Pixtral tower): rows of merged patches, each row closed by ``[IMG_BREAK]``, the
    last by ``[IMG_END]`` instead.

    The grid comes from the processor's ``image_sizes`` (the resized image, a multiple of the
    merged patch) and the model's patch and merge sizes; a merged token covers
    ``spatial_merge_size`` x ``spatial_merge_size`` source patches, in row-major order.
    """
    image_sizes = model_inputs.get("image_sizes")
    if image_sizes is None:
        raise UnsupportedModelError("Pixtral layout needs the processor's 'image_sizes' input")
    cell = int(model.config.vision_config.patch_size) * int(model.config.spatial_merge_size)
    height, width = (int(v) for v in image_sizes[0].tolist())
    rows, cols = height // cell, width // cell
    if rows * (cols + 1) != n_tokens:
        raise UnsupportedModelError(
            f"a {height}x{width} image in {cell} px merged patches is {rows} rows of {cols} tokens plus a break "
            f"each ({rows * (cols + 1)} tokens), but the prompt has {n_tokens} image tokens"
        )
    labels, grid_index = [], []
    for r in range(rows):
        labels += [f"<img {r},{c}>" for c in range(cols)] + ["<img break>" if r < rows - 1 else "<img end>"]
        grid_index += [r * cols + c for c in range(cols)] + [-1]
    return PatchLayout(labels=labels, rows=rows, cols=cols, grid_index=grid_index)
