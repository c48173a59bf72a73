"""Attention knock-out: cut the attention edges from source to target positions, measure the loss.

At each chosen layer, target positions may not attend to the source positions: the entries
``(t, j)`` of the attention mask are set to the dtype's minimum (an additive float mask
``[B, 1, T, T]`` = the layer's own mask + knocked entries, passed to the attention module by a
forward pre-hook; eager and sdpa attention both add it to the scores before the softmax, so the
knocked weights are exactly 0 and the rest renormalise). The layer's own mask is causal, or, where
the wrapper masks its decoder itself (Gemma 3's image block and sliding windows, PaliGemma's
prefix-LM), the mask the decoder call hands the layer, so an edge to an earlier position that the
pattern opens (an image token reading a later one) is cut too. A position always keeps its own
diagonal entry, so no row is fully masked. No KV cache is used: the whole decoder runs on the
clean inputs, and each batch row carries its own mask, so many knock-outs share one forward.

``targets=None`` cuts every edge *from* the sources (every later position, image tokens
included), so their information cannot reach the answer by any route through attention at
those layers. The reported quantity is the drop of the target token's probability at the
last position, ``p_clean - p_knocked``.

:func:`knockout_test` is the causal check that a small subset of patches carries the image's
information: the ``k`` patches with the largest attention contributions (summed over layers)
are knocked out, against ``k`` random patches ``repeats`` times (mean and std of the drop).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from mllm_lens.errors import TraceConfigError, UnsupportedModelError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.tracing.attention import attention_contributions

Source = int | tuple[int, int]


@dataclass
class KnockoutResult:
    """Target probability with the edges cut, and the drop from the clean run."""

    clean_prob: float
    knocked_prob: float
    target_id: int
    sources: list[int]
    layers: list[int]

    @property
    def drop(self) -> float:
        return self.clean_prob - self.knocked_prob


@dataclass
class KnockoutTest:
    """Top-k patches by contribution vs ``repeats`` draws of k random patches."""

    k: int
    top_patches: list[tuple[int, int]]
    topk_drop: float
    random_drops: np.ndarray  # [repeats]
    clean_prob: float
    layers: list[int] = field(default_factory=list)

    @property
    def random_mean(self) -> float:
        return float(self.random_drops.mean())

    @property
    def random_std(self) -> float:
        return float(self.random_drops.std())

    def summary(self) -> str:
        return (
            f"knock-out of {self.k} patches: top-k by contribution drops p by {self.topk_drop:.4f}, "
            f"random k drop {self.random_mean:.4f} +/- {self.random_std:.4f} ({len(self.random_drops)} draws); "
            f"clean p {self.clean_prob:.4f}"
        )


def source_positions(encoded: EncodedProbe, sources: Sequence[Source]) -> list[int]:
    """Prompt positions of ``sources``: positions (ints) or base-grid patches ``(row, col)``."""
    out = []
    for source in sources:
        if isinstance(source, tuple):
            out.append(encoded.image_span[0] + encoded.patch_layout.token_of_patch(*source))
        else:
            position = int(source)
            if not 0 <= position < encoded.length:
                raise TraceConfigError(f"source position {position} outside the prompt's {encoded.length} tokens")
            out.append(position)
    return sorted(set(out))


def cut_edges(length: int, sources: Sequence[int], targets: Sequence[int] | None, device: torch.device) -> torch.Tensor:
    """Bool ``[T, T]``: True at ``(t, j)`` for t in targets (default: all), j in sources, t != j."""
    cut = torch.zeros(length, length, dtype=torch.bool, device=device)
    if sources:
        rows = torch.arange(length, device=device) if targets is None else torch.tensor(list(targets), device=device)
        cut[rows[:, None], torch.tensor(list(sources), device=device)[None]] = True
        cut.fill_diagonal_(False)
    return cut


def _check_layers(model: LensModel, layers: Sequence[int] | None) -> list[int]:
    n = model.num_layers
    chosen = list(range(n)) if layers is None else sorted({int(x) for x in layers})
    if chosen and (chosen[0] < 0 or chosen[-1] >= n):
        raise TraceConfigError(f"layers must lie in 0..{n - 1}, got {list(layers or [])}")
    return chosen


def knocked_probs(
    model: LensModel,
    embeds: torch.Tensor,
    cuts: torch.Tensor,
    layers: Sequence[int],
    batch_size: int = 16,
    positions: torch.Tensor | None = None,
    pattern: AttentionPattern | None = None,
    deepstack: DeepStack | None = None,
) -> torch.Tensor:
    """Next-token distributions ``[N, vocab]`` with the edges ``cuts[i] [T, T]`` (bool, see
    :func:`cut_edges`) cut at ``layers`` for row i (``positions``, ``pattern``, ``deepstack``: an M-RoPE
    decoder's ids, a self-masking wrapper's pattern and a DeepStack wrapper's additions, from
    :meth:`~mllm_lens.models.lens_model.LensModel.decoder_call`; a knock-out cuts attention edges only,
    so a DeepStack addition still reaches its own image position)."""
    adapter = model.adapter
    current: dict[str, torch.Tensor] = {}
    causal = torch.ones(cuts.shape[-2:], dtype=torch.bool, device=cuts.device).triu(1)
    lowest = torch.finfo(embeds.dtype).min

    def swap(_module, args, kwargs):
        if "attention_mask" not in kwargs:
            raise UnsupportedModelError("the attention module is not given its mask as the 'attention_mask' keyword")
        own = kwargs["attention_mask"]  # the pattern's rows for a self-masked decoder, else none needed (causal)
        if pattern is None:
            own = torch.zeros(causal.shape, dtype=embeds.dtype, device=embeds.device).masked_fill(causal, lowest)
        kwargs["attention_mask"] = own.masked_fill(current["cut"], lowest)
        return args, kwargs

    parts = []
    with ExitStack() as stack, torch.no_grad():
        for layer in layers:
            handle = adapter.attention(layer).register_forward_pre_hook(swap, with_kwargs=True)
            stack.callback(handle.remove)
        for start in range(0, len(cuts), batch_size):
            chunk = cuts[start : start + batch_size]
            current["cut"] = chunk[:, None]
            logits = model.decoder_logits(
                embeds.expand(len(chunk), -1, -1), positions=positions, pattern=pattern, deepstack=deepstack
            )
            parts.append(torch.softmax(logits, -1))
    return torch.cat(parts) if parts else torch.empty(0)


def _prepare(model: LensModel, probe: Probe | EncodedProbe, target_id: int | None):
    encoded = probe if isinstance(probe, EncodedProbe) else probe.encode(model)
    call = model.decoder_call(encoded.model_inputs)
    with torch.no_grad():
        logits = model.decoder_logits(
            call.embeds, positions=call.positions, pattern=call.pattern, deepstack=call.deepstack
        )
        clean = torch.softmax(logits[0], -1)
    target = encoded.target_id if target_id is None else target_id
    target = int(clean.argmax()) if target is None else int(target)
    return encoded, call, clean, target


def knockout(
    model: LensModel,
    probe: Probe | EncodedProbe,
    sources: Sequence[Source],
    targets: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    *,
    target_id: int | None = None,
) -> KnockoutResult:
    """Block attention from ``sources`` to ``targets`` (default: every position) at ``layers``
    (default: all); the target token's probability at the last position, clean and knocked."""
    encoded, call, clean, target = _prepare(model, probe, target_id)
    chosen = _check_layers(model, layers)
    positions = source_positions(encoded, sources)
    if targets is not None and any(not 0 <= int(t) < encoded.length for t in targets):
        raise TraceConfigError(f"targets must lie in [0, {encoded.length})")
    cut = cut_edges(encoded.length, positions, targets, call.embeds.device)
    probs = knocked_probs(
        model, call.embeds, cut[None], chosen, positions=call.positions, pattern=call.pattern, deepstack=call.deepstack
    )[0]
    return KnockoutResult(float(clean[target]), float(probs[target]), target, positions, chosen)


def knockout_test(
    model: LensModel,
    probe: Probe | EncodedProbe,
    k: int,
    layers: Sequence[int] | None = None,
    targets: Sequence[int] | None = None,
    repeats: int = 20,
    seed: int = 0,
    *,
    rank_target: str | int | None = None,
    target_id: int | None = None,
) -> KnockoutTest:
    """Knock out the top-``k`` patches by attention contribution vs ``k`` random patches.

    Patches are ranked by the head-summed contribution to ``rank_target`` (default: the
    visual constraint's last token, else the last token) summed over ``layers``.
    """
    encoded, call, clean, target = _prepare(model, probe, target_id)
    chosen = _check_layers(model, layers)
    layout = encoded.patch_layout
    n_patches = layout.rows * layout.cols
    if not 1 <= k <= n_patches:
        raise TraceConfigError(f"k must lie in 1..{n_patches} (the base grid's patches), got {k}")
    if repeats < 1:
        raise TraceConfigError(f"repeats must be >= 1, got {repeats}")
    if rank_target is None:
        rank_target = "visual" if encoded.probe.constraints else "last"
    contributions = attention_contributions(model, encoded, rank_target, layers=chosen or None)
    top = contributions.top_patches(k)
    rng = np.random.default_rng(seed)
    draws = [
        [divmod(int(i), layout.cols) for i in rng.choice(n_patches, size=k, replace=False)] for _ in range(repeats)
    ]
    cuts = torch.stack(
        [
            cut_edges(encoded.length, source_positions(encoded, patches), targets, call.embeds.device)
            for patches in [top, *draws]
        ]
    )
    knocked = knocked_probs(
        model, call.embeds, cuts, chosen, positions=call.positions, pattern=call.pattern, deepstack=call.deepstack
    )
    probs = knocked[:, target].cpu().numpy()
    clean_prob = float(clean[target])
    return KnockoutTest(
        k=k,
        top_patches=top,
        topk_drop=clean_prob - float(probs[0]),
        random_drops=clean_prob - probs[1:].astype(np.float64),
        clean_prob=clean_prob,
        layers=chosen,
    )
