"""Where each visual token sits in the image: patch grids per architecture.

A :class:`PatchLayout` maps the i-th image token of the prompt to a label (``<img r,c>``) and,
for tokens of the base patch grid, to its (row, col). LLaVA-1.5 uses a square grid in
row-major order after the CLS token is dropped; LLaVA-NeXT and LLaVA-OneVision add
high-resolution tiles whose rows end in an image-newline token, and their layout is read off the
model's own packing code. Mistral 3 (Pixtral) closes each row of merged patches with a break
token. Idefics3 and SmolVLM cut the image into tiles, each introduced by marker tokens, then add a
global view; InternVL puts its tiles and a thumbnail between ``<img>`` and ``</img>``. Qwen2-VL
and Qwen2.5-VL merge 2 x 2 patches of an image kept near its own size, so the grid depends on the
image. Gemma 3 pools its vision tower's patches into a fixed square grid (16 x 16 in the checkpoints)
between begin- and end-of-image markers. PaliGemma keeps its SigLIP tower's patch grid, one token
per patch, and its processor puts ``<bos>`` right after the image. Marker tokens (newline, break, end,
tile tags, image begin and end, PaliGemma's ``<bos>``) are labelled as such, outside the grid.
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


def qwen2_vl_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one token per ``merge x merge`` block of source patches, row-major.

    The grid follows the image: the processor resizes it to a multiple of the merged patch and
    reports the patch grid ``(t, h, w)`` in ``image_grid_thw``; the tokens are the ``h / merge x
    w / merge`` merged blocks in row-major order (the order the model's M-RoPE height and width ids
    count in). ``<|vision_start|>``/``<|vision_end|>`` lie outside the image's span.
    """
    grid_thw = model_inputs.get("image_grid_thw")
    if grid_thw is None:
        raise UnsupportedModelError("the Qwen-VL layout needs the processor's 'image_grid_thw' input")
    merge = int(model.config.vision_config.spatial_merge_size)
    frames, height, width = (int(v) for v in grid_thw[0].tolist())
    rows, cols = height // merge, width // merge
    if frames != 1 or rows * cols != n_tokens:
        raise UnsupportedModelError(
            f"an image grid of {frames}x{height}x{width} patches merged {merge}x{merge} is {frames * rows * cols} "
            f"tokens in {frames} frame(s), but the prompt has {n_tokens} image tokens of one frame"
        )
    labels = [f"<img {r},{c}>" for r in range(rows) for c in range(cols)]
    return PatchLayout(labels=labels, rows=rows, cols=cols, grid_index=list(range(rows * cols)))


def gemma3_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """Gemma 3: ``<start_of_image>``, ``mm_tokens_per_image`` pooled tokens, ``<end_of_image>``.

    The projector average-pools the vision tower's ``p x p`` patch grid into ``side x side`` cells
    (``side = sqrt(mm_tokens_per_image)``) and flattens them row-major, so token ``k`` covers cell
    ``(k // side, k % side)`` of the whole (resized, square) image."""
    config = model.config
    side = math.isqrt(int(config.mm_tokens_per_image))
    ids = model_inputs["input_ids"][0].tolist()
    runs = [i for i, t in enumerate(ids) if t == config.boi_token_index]
    if side * side != config.mm_tokens_per_image or n_tokens != side * side + 2 or len(runs) != 1:
        raise UnsupportedModelError(
            f"gemma3: {n_tokens} image tokens are not one image's <start_of_image>, {side}x{side} pooled tokens "
            "and <end_of_image> (pan-and-scan crops are not mapped onto the picture)"
        )
    start = runs[0]
    if ids[start + n_tokens - 1] != config.eoi_token_index:
        raise UnsupportedModelError("gemma3: the image's pooled tokens are not closed by <end_of_image>")
    labels = ["<img boi>", *(f"<img {r},{c}>" for r in range(side) for c in range(side)), "<img eoi>"]
    return PatchLayout(labels=labels, rows=side, cols=side, grid_index=[-1, *range(side * side), -1])


def paligemma_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """PaliGemma: one token per patch of the SigLIP tower's square grid, row-major, then the ``<bos>``
    the processor writes after the image (inside the run that replaced the placeholder)."""
    side = _vision_grid(model)
    ids = model_inputs["input_ids"][0].tolist()
    image_id = getattr(model.config, "image_token_id", None)
    image_id = model.config.image_token_index if image_id is None else image_id
    start = ids.index(image_id) if image_id in ids else -1
    tokens = ids[start : start + n_tokens] if start >= 0 else []
    if tokens[: side * side] != [image_id] * (side * side) or n_tokens not in (side * side, side * side + 1):
        raise UnsupportedModelError(
            f"paligemma: {n_tokens} image tokens are not the {side}x{side} patch grid (and the <bos> after it)"
        )
    labels = [f"<img {r},{c}>" for r in range(side) for c in range(side)]
    extra = ["<img bos>"] * (n_tokens - side * side)
    return PatchLayout(
        labels=[*labels, *extra], rows=side, cols=side, grid_index=[*range(side * side), *[-1] * len(extra)]
    )


def _shuffled_cells(shuffle: Callable[[torch.Tensor], torch.Tensor], patches: int, scale: int) -> list[tuple[int, int]]:
    """(row, col) in the merged grid of each token of a pixel shuffle, found by shuffling the
    patches' coordinates with the model's own code: ``shuffle`` maps ``[1, patches, patches, 2]``
    (each patch's row and col) to its ``scale * scale`` patches per token."""
    rr, cc = torch.meshgrid(torch.arange(patches), torch.arange(patches), indexing="ij")
    blocks = shuffle(torch.stack([rr, cc], -1).float()[None]).reshape(-1, scale * scale, 2)
    return [(r // scale, c // scale) for r, c in blocks.amin(1).long().tolist()]


def idefics3_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """Idefics3 / SmolVLM: ``rows x cols`` tiles, then a global view of the whole image, each
    ``side x side`` tokens (the pixel shuffle merges ``scale x scale`` patches into a token).

    The processor writes ``<fake_token_around_image><row_i_col_j>`` before each tile's tokens, a
    newline after each row of tiles, a blank line, ``<fake_token_around_image><global-img>`` before
    the global view and ``<fake_token_around_image>`` after it; an image that fits one tile gets the
    global view only. The base grid is the picture at the finest resolution the prompt has: the
    tiles side by side (tile ``(ty, tx)``'s token ``(r, c)`` is cell ``(ty * side + r, tx * side + c)``,
    labelled ``<img R,C>``), global-view tokens ``<img global r,c>`` outside it; or, unsplit, the
    global view. ``<row_i_col_j>`` is labelled ``<img tile i-1,j-1>``. The processor does not return
    the tile counts: the rows of tiles are read off the prompt, where newline tokens end each row.
    """
    family = model.config.model_type
    scale = int(model.config.scale_factor)
    patches = int(model.config.vision_config.image_size) // int(model.config.vision_config.patch_size)
    inner: Any = model.model  # the wrapper's Idefics3Model / SmolVLMModel (connector.pixel_shuffle)
    cells = _shuffled_cells(lambda x: inner.connector.pixel_shuffle(x.flatten(1, 2), scale), patches, scale)
    side = patches // scale
    seq = side * side
    ids = model_inputs["input_ids"][0].tolist()
    where = [i for i, t in enumerate(ids) if t == model.config.image_token_id]
    frames = len(where) // seq
    runs = [where[k * seq] for k in range(frames)]
    if (
        not runs
        or len(where) != frames * seq
        or any(where[k * seq + seq - 1] != runs[k] + seq - 1 for k in range(frames))
    ):
        raise UnsupportedModelError(f"{family}: {len(where)} image tokens do not form runs of {seq}, one per tile")
    start, end = runs[0] - 2, runs[0] - 2 + n_tokens
    fakes = [r - 2 for r in runs] + [end - 1]
    if end != runs[-1] + seq + 1 or len({ids[i] for i in fakes}) != 1:
        raise UnsupportedModelError(
            f"{family}: the image's {n_tokens} tokens are not tiles of {seq} image tokens between marker tokens"
        )
    gaps = [runs[k] - runs[k - 1] - seq for k in range(1, frames)]  # 2 markers, plus newlines after a row
    if frames > 1 and gaps[-1] <= 2:
        raise UnsupportedModelError(
            f"{family}: the tokenizer drops the newlines that end each row of tiles, so the rows cannot be told apart"
        )
    tiles = frames - 1
    row_starts = [k for k, gap in enumerate(gaps[:-1], 1) if gap > 2]  # the first tile of each later row
    cols = row_starts[0] if row_starts else max(tiles, 1)
    if tiles % cols or row_starts != list(range(cols, tiles, cols)):
        raise UnsupportedModelError(f"{family}: the {tiles} tiles are not rows of equal length")
    grid_cols = cols * side if tiles else side
    labels = ["<img \\n>"] * n_tokens
    grid_index = [-1] * n_tokens
    for i in fakes:
        labels[i - start] = "<img around>"
    for k, run in enumerate(runs):
        ty, tx = divmod(k, cols)
        labels[run - start - 1] = "<img global>" if k == tiles else f"<img tile {ty},{tx}>"
        for j, (r, c) in enumerate(cells):
            at = run - start + j
            if k < tiles:
                row, col = ty * side + r, tx * side + c
                labels[at], grid_index[at] = f"<img {row},{col}>", row * grid_cols + col
            elif tiles:
                labels[at] = f"<img global {r},{c}>"
            else:
                labels[at], grid_index[at] = f"<img {r},{c}>", r * side + c
    rows = tiles // cols * side if tiles else side
    return PatchLayout(labels=labels, rows=rows, cols=grid_cols, grid_index=grid_index)


def internvl_layout(model: PreTrainedModel, model_inputs: dict, n_tokens: int) -> PatchLayout:
    """InternVL: ``<img>``, the tiles' tokens one tile after the other, ``</img>``; each tile is
    ``side x side`` tokens (pixel shuffle by ``downsample_ratio``, read off the model's own), and a
    thumbnail of the whole image comes last when the image was cut into several tiles.

    Only the tile count reaches the model (the processor picks the arrangement closest to the
    image's aspect ratio and does not return it), so tiles cannot be placed in the picture: their
    tokens are ``<img tile k r,c>`` outside the grid, and the base grid is the thumbnail, or the
    image's one tile when it was not cut.
    """
    inner: Any = model.model  # the wrapper's InternVLModel (pixel_shuffle)
    ratio = float(model.config.downsample_ratio)
    vision = model.config.vision_config
    size, patch = (v[0] if isinstance(v, (list, tuple)) else v for v in (vision.image_size, vision.patch_size))
    scale, patches = round(1 / ratio), int(size) // int(patch)
    side = patches // scale
    frames = int(model_inputs["pixel_values"].shape[0])
    if n_tokens != frames * side * side + 2:
        raise UnsupportedModelError(
            f"internvl: {frames} tiles of {side}x{side} tokens between <img> and </img> are "
            f"{frames * side * side + 2} tokens, but the prompt has {n_tokens}"
        )
    cells = _shuffled_cells(lambda x: inner.pixel_shuffle(x, scale_factor=ratio), patches, scale)
    labels, grid_index = ["<img start>"], [-1]
    for k in range(frames):
        for r, c in cells:
            whole = k == frames - 1
            labels.append(f"<img {r},{c}>" if whole else f"<img tile {k} {r},{c}>")
            grid_index.append(r * side + c if whole else -1)
    return PatchLayout(labels=[*labels, "<img end>"], rows=side, cols=side, grid_index=[*grid_index, -1])
