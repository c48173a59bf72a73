"""Attention contributions: how much each source token writes into a target token, per layer.

The paper's Eq. 1 (form of the same group's SAT-Probe): at layer ``l`` the attention output
at a target position ``t`` is a sum over source positions ``j`` and heads ``h``::

    attn_out[t] = sum_j sum_h  A[h, t, j] * v_j^h @ W_O^h.T   +  b_O

with ``A [heads, T, T]`` the attention weights, ``v_j^h = (x_j W_V)`` restricted to the head's
key/value group (grouped-query attention: head ``h`` reads value head ``h // (heads / kv_heads)``)
and ``W_O^h [d, head_dim]`` the head's slice of the output projection. The contribution of
``j`` to ``t`` is the norm of its term, per head ``||A[h,t,j] v_j^h W_O^h||`` (``per_head
[layers, heads, T]``) or summed over heads ``||sum_h A[h,t,j] v_j^h W_O^h||`` (``total
[layers, T]``). The output bias ``b_O`` is not attributable to any source and is left out.

How: one forward of the decoder with its usual attention implementation (sdpa by default);
a forward pre-hook keeps each attention module's inputs. Afterwards each attention module is
run alone once more on those inputs with ``config._attn_implementation`` set to ``"eager"``
(restored afterwards) and the mask the layer got in that forward (a causal one where the default
implementation needed none; Gemma 3's image block and sliding window as its wrapper builds them),
which returns the weights ``A`` exactly as the model computes them (rotary, partial rotary, q/k
norms included). Values come from the
adapter's value projection, so no architecture detail lives here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mllm_lens.errors import ProbeError, TraceConfigError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.results import ContributionResult

Target = str | int


def resolve_target(encoded: EncodedProbe, target: Target) -> int:
    """``"visual"``: last token of the probe's visual constraint; ``"last"``: last prompt token; an index."""
    if target == "last":
        return encoded.length - 1
    if target == "visual":
        constraint = encoded.probe.constraint()  # raises ProbeError without constraints
        return encoded.spans[constraint.text][1] - 1
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        index = int(target) + (encoded.length if target < 0 else 0)
        if not 0 <= index < encoded.length:
            raise ProbeError(f"target position {target} outside the prompt's {encoded.length} tokens")
        return index
    raise ProbeError(f"target must be 'visual', 'last' or a position, got {target!r}")


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive float mask ``[1, 1, T, T]``: 0 on and below the diagonal, the dtype's min above."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def _additive(mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """The layer's mask as eager attention adds it: causal where the forward needed none, a bool mask
    (True: attend) turned into 0 / the dtype's min, an additive one as it is."""
    if mask is None:
        return causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill_(
            ~mask, torch.finfo(hidden.dtype).min
        )
    return mask


@contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """Temporarily switch the module's config to eager attention (which returns its weights)."""
    config: Any = module.config
    old = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = old


@dataclass
class AttentionInputs:
    """What each attention module received in one forward: ``args``/``kwargs`` per layer."""

    calls: dict[int, tuple[tuple, dict]]
    logits: torch.Tensor  # [vocab] at the last position


def capture_attention_inputs(
    model: LensModel,
    embeds: torch.Tensor,
    layers: Sequence[int],
    positions: torch.Tensor | None = None,
    pattern: AttentionPattern | None = None,
    deepstack: DeepStack | None = None,
) -> AttentionInputs:
    """One decoder forward on ``embeds [1, T, d]`` (``positions``, ``pattern``, ``deepstack``: an M-RoPE
    decoder's ids, a self-masking wrapper's attention pattern and a DeepStack wrapper's additions, see
    :meth:`~mllm_lens.models.lens_model.LensModel.decoder_call`), keeping the attention inputs of ``layers``."""
    adapter = model.adapter
    calls: dict[int, tuple[tuple, dict]] = {}

    def keeper(layer: int):
        def hook(_module, args, kwargs):
            calls[layer] = (tuple(args), dict(kwargs))

        return hook

    handles = [adapter.attention(layer).register_forward_pre_hook(keeper(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            logits = model.decoder_logits(embeds, positions=positions, pattern=pattern, deepstack=deepstack)[0]
    finally:
        for handle in handles:
            handle.remove()
    return AttentionInputs(calls, logits)


def _hidden_of(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def attention_weights(model: LensModel, inputs: AttentionInputs, layer: int) -> torch.Tensor:
    """The layer's attention weights ``[heads, T, T]`` from a lone eager re-run of its module."""
    attention = model.adapter.attention(layer)
    hidden, args, kwargs = _hidden_of(*inputs.calls[layer])
    kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "use_cache")}
    kwargs["attention_mask"] = _additive(kwargs.get("attention_mask"), hidden)
    with torch.no_grad(), eager_attention(attention):
        _out, weights = attention(hidden, *args, **kwargs)
    if weights is None:
        raise TraceConfigError(f"layer {layer}'s attention returned no weights even in eager mode")
    return weights[0]


def source_vectors(
    model: LensModel, inputs: AttentionInputs, layer: int, target: int, chunk: int = 256
) -> torch.Tensor:
    """Per-head writes of every source into ``target``: ``[heads, T, d]`` (float32).

    ``source_vectors(...).sum((0, 1)) + b_O`` equals the attention output at ``target``.
    """
    adapter = model.adapter
    weights = attention_weights(model, inputs, layer)[:, target].float()  # [H, T]
    hidden, _args, _kwargs = _hidden_of(*inputs.calls[layer])
    out_proj = adapter.attn_out(layer)
    heads = weights.shape[0]
    head_dim = out_proj.in_features // heads
    w_o = out_proj.weight.detach().float().view(-1, heads, head_dim)  # [d, H, hd]
    with torch.no_grad():
        values = adapter.value_proj(layer)(hidden[0]).float()  # [T, kv * hd]
    kv = values.shape[-1] // head_dim
    values = values.view(-1, kv, head_dim).repeat_interleave(heads // kv, dim=1)  # [T, H, hd]
    length = values.shape[0]
    parts = []
    for start in range(0, length, chunk):
        a = weights[:, start : start + chunk]  # [H, c]
        v = values[start : start + chunk]  # [c, H, hd]
        parts.append(torch.einsum("hc,chk,dhk->hcd", a, v, w_o))
    return torch.cat(parts, dim=1)


def layer_contributions(
    model: LensModel, inputs: AttentionInputs, layer: int, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(per_head [heads, T], total [T])`` norms of one layer's source writes into ``target``."""
    vectors = source_vectors(model, inputs, layer, target)
    per_head = vectors.norm(dim=-1)
    total = vectors.sum(0).norm(dim=-1)
    return per_head.cpu().numpy().astype(np.float64), total.cpu().numpy().astype(np.float64)


def _check_layers(model: LensModel, layers: Sequence[int] | None) -> list[int]:
    n = model.num_layers
    if layers is None:
        return list(range(n))
    chosen = sorted({int(layer) for layer in layers})
    if not chosen or chosen[0] < 0 or chosen[-1] >= n:
        raise TraceConfigError(f"layers must be a non-empty subset of 0..{n - 1}, got {list(layers)}")
    return chosen


def visual_grid(encoded: EncodedProbe, values: np.ndarray) -> np.ndarray:
    """Values ``[..., T]`` of the base patch grid's tokens as ``[..., rows, cols]`` (NaN where absent)."""
    layout = encoded.patch_layout
    start, _end = encoded.image_span
    grid = np.full((*values.shape[:-1], layout.rows, layout.cols), np.nan)
    for i, g in enumerate(layout.grid_index):
        if g >= 0:
            grid[..., g // layout.cols, g % layout.cols] = values[..., start + i]
    return grid


def attention_contributions(
    model: LensModel, probe: Probe | EncodedProbe, target: Target = "visual", layers: Sequence[int] | None = None
) -> ContributionResult:
    """Eq. 1 contributions from every position to ``target`` at each of ``layers`` (default: all).

    ``target``: ``"visual"`` (last token of the visual constraint), ``"last"`` (last prompt
    token) or a position. See the module docstring; the output bias is not attributed.
    """
    encoded = probe if isinstance(probe, EncodedProbe) else probe.encode(model)
    t = resolve_target(encoded, target)
    chosen = _check_layers(model, layers)
    call = model.decoder_call(encoded.model_inputs)
    inputs = capture_attention_inputs(model, call.embeds, chosen, call.positions, call.pattern, call.deepstack)
    per_head, total = zip(*(layer_contributions(model, inputs, layer, t) for layer in chosen), strict=True)
    total_arr = np.stack(total)
    layout = encoded.patch_layout
    return ContributionResult(
        per_head=np.stack(per_head),
        total=total_arr,
        target=t,
        labels=list(encoded.labels),
        visual=visual_grid(encoded, total_arr),
        image_span=encoded.image_span,
        patch_grid=(layout.rows, layout.cols),
        layers=chosen,
        settings={"target": target if isinstance(target, str) else int(target), "model": model.name},
    )
