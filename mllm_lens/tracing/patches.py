"""Per-patch causal tracing: which image patches carry the answer, and at which layers.

Two modes over the base patch grid (``rows x cols``, see :mod:`mllm_lens.models.layouts`),
one patch or a ``block x block`` block of patches per cell:

* ``"restore"``: every visual token is corrupted (:class:`ImageNoise`); the clean ``site``
  output at the block's tokens is restored in the layer window around each layer ->
  ``scores [layers, rows', cols']`` = target probability;
* ``"corrupt"``: only the block's tokens are corrupted (the same noise scale and seed) ->
  ``scores [rows', cols']`` = target probability; :attr:`PatchResult.effect` is the drop.

Speed: with image noise the first changed position is the first image token, so a shared
prefix saves almost nothing. Instead a cell whose first restored (or corrupted) position is
``p`` and whose earliest changed layer is ``s`` runs only positions ``>= p`` through layers
``>= s`` on top of the base run's keys/values (:class:`~mllm_lens.tracing.partial.PartialDecoder`;
hidden-state restorations start one layer above the restored one). Cells are grouped by
``s``, sorted by ``p`` and batched; a batch starts at its smallest ``p`` (rows with a larger
``p`` recompute a few unchanged positions, which is exact). Where the wrapper masks its decoder
itself (Gemma 3's image tokens read each other both ways), ``p`` is where the first restored or
noised token can reach (:meth:`~mllm_lens.tracing.partial.PartialDecoder.restart`: the image
block's start), and every layer is masked with the model's own pattern. Where the wrapper adds the
image into early layers too (Qwen3-VL's DeepStack), noise reaches those additions at the noised
tokens (:meth:`~mllm_lens.tracing.corruption.ImageNoise.apply_deepstack`) and every run replays them,
each corrupt-mode row its own. Every score equals the plain
per-cell loop :func:`~mllm_lens.tracing.reference.reference_patch_sweep` (one full forward per
cell) to float32 rounding.

LLaVA-NeXT: only the base grid (the first ``rows x cols`` visual tokens) is swept; in restore
mode the high-resolution tiles and newline tokens stay corrupted. Layouts without a base grid
are refused with :class:`~mllm_lens.errors.UnsupportedModelError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mllm_lens.errors import CorruptionError, TraceConfigError, UnsupportedModelError
from mllm_lens.models.adapters import SITES
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.results import PatchResult
from mllm_lens.tracing import budget
from mllm_lens.tracing.corruption import ImageNoise, corrupted_call
from mllm_lens.tracing.partial import PartialDecoder
from mllm_lens.tracing.session import check_batch_size
from mllm_lens.tracing.windows import window_layers

MODES = ("restore", "corrupt")
Block = tuple[tuple[int, int], list[int]]  # (cell (row, col), image-token indices)


def patch_blocks(encoded: EncodedProbe, block: int = 1, stride: int | None = None) -> list[Block]:
    """Cells of the base grid: ``((i, j), token indices)`` for blocks at ``(i*stride, j*stride)``.

    Edge blocks are clipped to the grid. Raises if the layout has no mappable base grid.
    """
    layout = encoded.patch_layout
    stride = block if stride is None else stride
    if block < 1 or stride < 1:
        raise TraceConfigError(f"block and stride must be >= 1, got block={block}, stride={stride}")
    if block > min(layout.rows, layout.cols):
        raise TraceConfigError(f"block {block} is larger than the {layout.rows}x{layout.cols} patch grid")
    where = {g: i for i, g in enumerate(layout.grid_index) if g >= 0}
    if len(where) != layout.rows * layout.cols:
        raise UnsupportedModelError(
            f"the image layout maps {len(where)} visual tokens onto the {layout.rows}x{layout.cols} base grid; "
            "per-patch tracing needs one token per base-grid patch"
        )
    cells = []
    for i, r in enumerate(range(0, layout.rows, stride)):
        for j, c in enumerate(range(0, layout.cols, stride)):
            rr = range(r, min(r + block, layout.rows))
            cc = range(c, min(c + block, layout.cols))
            cells.append(((i, j), sorted(where[y * layout.cols + x] for y in rr for x in cc)))
    return cells


def _grid_shape(cells: list[Block]) -> tuple[int, int]:
    return max(i for (i, _), _ in cells) + 1, max(j for (_, j), _ in cells) + 1


def _check(mode: str, site: str, noise: ImageNoise) -> None:
    if mode not in MODES:
        raise TraceConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if site not in SITES:
        raise TraceConfigError(f"unknown site {site!r}; expected one of {SITES}")
    if not isinstance(noise, ImageNoise):
        raise CorruptionError(f"per-patch tracing corrupts the image: pass an ImageNoise, got {noise!r}")
    if mode == "corrupt" and noise.patches is not None:
        raise CorruptionError("in corrupt mode the patches are the swept cells: pass ImageNoise without patches")


#: Rows x positions per partial run. Larger runs spill the elementwise work (norms, rotary,
#: attention) out of the CPU caches; measured on benchmarks/patch_sweep.py's models.
TOKENS_PER_RUN = 1536


def _chunks(items: list, start_of, size: int, length: int, tokens: int = TOKENS_PER_RUN):
    """Items sorted by ``start_of``, in runs of at most ``size`` rows and about ``tokens``
    row-positions (a run covers positions ``[start_of(first), length)``)."""
    items = sorted(items, key=start_of)
    i = 0
    while i < len(items):
        rows = max(1, min(size, tokens // max(1, length - start_of(items[i]))))
        yield items[i : i + rows]
        i += rows


def patch_sweep(
    model: LensModel,
    probe: Probe | EncodedProbe,
    mode: str = "restore",
    site: str = "hidden",
    window: int = 1,
    window_mode: str = "paper",
    *,
    block: int = 1,
    stride: int | None = None,
    layers: Sequence[int] | None = None,
    noise: ImageNoise | None = None,
    target_id: int | None = None,
    patches: Sequence[tuple[int, int]] | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    tokens_per_run: int = TOKENS_PER_RUN,
    progress: bool = False,
) -> PatchResult:
    """Trace every patch (block) of the base grid; see the module docstring.

    ``layers`` (restore mode) picks the rows of ``scores`` (default: all layers); ``noise``
    sets the corruption's scale and seed (default ``ImageNoise()``: 3 sigma, seed 0);
    ``target_id`` defaults to the probe's answer, else the clean run's top-1 token;
    ``patches`` limits the sweep to these cells ``(i, j)`` of the result grid (others are NaN).
    ``batch_size`` caps the rows of one partial run (default: what ``memory_budget`` bytes hold,
    :mod:`mllm_lens.tracing.budget`), ``tokens_per_run`` its rows x positions.
    """
    noise = ImageNoise() if noise is None else noise
    _check(mode, site, noise)
    check_batch_size(batch_size, memory_budget)
    encoded = probe if isinstance(probe, EncodedProbe) else probe.encode(model)
    cells = patch_blocks(encoded, block, stride)
    rows, cols = _grid_shape(cells)
    if patches is not None:
        wanted = {(int(i), int(j)) for i, j in patches}
        if not wanted <= {cell for cell, _ in cells}:
            raise TraceConfigError(
                f"patches {sorted(wanted - {c for c, _ in cells})} lie outside the {rows}x{cols} grid"
            )
        cells = [(cell, idx) for cell, idx in cells if cell in wanted]
    start_img = encoded.image_span[0]
    n_layers = model.num_layers
    chosen = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    windows = [window_layers(layer, window, window_mode, n_layers) for layer in chosen]
    # noise leaves M-RoPE positions and the attention pattern as they are (and noises DeepStack additions)
    call = model.decoder_call(encoded.model_inputs)
    clean, positions, pattern = call.embeds, call.positions, call.pattern
    # a run may start at the first image token, so a row computes up to the whole prompt
    size = batch_size or budget.batch_size(model, encoded.length, encoded.length, budget=memory_budget, max_batch=32)
    kept = [site] if mode == "restore" and site != "hidden" else []  # hidden = layer outputs, always kept
    base_clean = PartialDecoder(
        model, clean, kept, max_batch=size, positions=positions, pattern=pattern, deepstack=call.deepstack
    )
    restart = base_clean.restart  # a cell starts where its first restored or noised token can reach
    clean_probs = torch.softmax(base_clean.logits, -1)
    target = encoded.target_id if target_id is None else target_id
    target = int(clean_probs.argmax()) if target is None else int(target)
    # work items: (first position, start layer, result index, token positions, restored layers)
    items: list[tuple[int, int, tuple[int, ...], list[int], tuple[int, ...]]]
    if mode == "restore":
        corrupted = corrupted_call(noise, model, encoded, call)
        base = PartialDecoder(
            model, corrupted.embeds, max_batch=size, positions=positions, pattern=pattern, deepstack=corrupted.deepstack
        )
        corrupted_prob = float(torch.softmax(base.logits, -1)[target])
        scores = np.full((len(chosen), rows, cols), np.nan)
        items = [
            (
                restart(start_img + idx[0]),
                wl[0] + 1 if site == "hidden" else wl[0],
                (li, *cell),
                [start_img + i for i in idx],
                wl,
            )
            for li, wl in enumerate(windows)
            for cell, idx in cells
        ]
    else:
        base, corrupted_prob = base_clean, None
        scores = np.full((rows, cols), np.nan)
        items = [(restart(start_img + idx[0]), 0, cell, idx, ()) for cell, idx in cells]
    groups: dict[int, list] = {}
    for item in items:
        groups.setdefault(item[1], []).append(item)
    bar = tqdm(total=len(items), desc=f"patch {mode}", disable=not progress, unit="cell")
    for start_layer, group in sorted(groups.items()):
        for batch in _chunks(group, lambda it: it[0], size, encoded.length, tokens_per_run):
            p, deepstack = batch[0][0], None
            if mode == "restore":
                hidden, plan = _restore_batch(base, base_clean, site, start_layer, p, batch)
            else:
                calls = [
                    corrupted_call(ImageNoise(it[3], noise.scale, noise.seed), model, encoded, call) for it in batch
                ]
                hidden, plan = torch.cat([c.embeds[:, p:] for c in calls]), {}
                if call.deepstack is not None:
                    deepstack = DeepStack.stack([c.deepstack for c in calls if c.deepstack is not None])
            if start_layer >= n_layers:
                logits = base.head(hidden[:, -1])
            else:
                logits = base.run(start_layer, p, hidden, plan, deepstack)
            probs = torch.softmax(logits, -1)[:, target].cpu().numpy()
            for it, prob in zip(batch, probs, strict=True):
                scores[it[2]] = prob
            bar.update(len(batch))
    bar.close()
    return PatchResult(
        scores=scores,
        mode=mode,
        clean_prob=float(clean_probs[target]),
        corrupted_prob=corrupted_prob,
        target_id=target,
        target_token=model.tokenizer.convert_ids_to_tokens(target),
        site=site if mode == "restore" else None,
        block=block,
        stride=block if stride is None else stride,
        patch_grid=(encoded.patch_layout.rows, encoded.patch_layout.cols),
        image_span=encoded.image_span,
        settings={
            "window": window,
            "window_mode": window_mode,
            "layers": chosen,
            "noise": {"scale": noise.scale, "seed": noise.seed, "patches": noise.describe(encoded)["patches"]},
            "batch_size": size,
            **({} if pattern is None else {"attention": pattern.describe()}),
            **({} if call.deepstack is None else {"deepstack": call.deepstack.describe(noised=True)}),
            "prompt": encoded.prompt,
            "model": model.name,
        },
    )


def _restore_batch(
    base: PartialDecoder, clean: PartialDecoder, site: str, start_layer: int, p: int, batch: list
) -> tuple[torch.Tensor, dict]:
    """Hidden states entering ``start_layer`` for positions ``>= p`` and the restore plan of a batch."""
    device = base.inputs[0].device
    if site == "hidden":
        below = start_layer - 1  # the restored layer: its output is the starting residual stream
        hidden = base.output_from(below, p).expand(len(batch), -1, -1).clone()
        for row, it in enumerate(batch):
            pos = torch.tensor(it[3], device=device)
            hidden[row, pos - p] = clean.outputs[below][pos]
    else:
        hidden = base.input_from(start_layer, p).expand(len(batch), -1, -1).clone()
    pairs: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for row, it in enumerate(batch):
        for layer in it[4]:
            if layer >= start_layer:
                pairs.setdefault((site, layer), []).extend((row, q) for q in it[3])
    plan = {}
    for key, rows_pos in pairs.items():
        index = torch.tensor(rows_pos, dtype=torch.long, device=device)
        source = clean.outputs[key[1]] if site == "hidden" else clean.site_outputs[key]
        plan[key] = (index[:, 0], index[:, 1] - p, source[index[:, 1]])
    return hidden, plan
