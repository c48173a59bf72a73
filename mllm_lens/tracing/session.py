"""A trace session: one probe and one corruption prepared once, queried many times.

The clean run, the corrupted run and the shared prefix cache are computed when the session
opens; whole traces (:meth:`TraceSession.trace`) and single restorations with their answer
distributions (:meth:`TraceSession.cell`, what a click on a heatmap cell asks for) then cost
only their restoration forwards. :func:`~mllm_lens.trace` and
:func:`~mllm_lens.trace_sites` are thin wrappers around a session.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mllm_lens.errors import CorruptionError, TraceConfigError
from mllm_lens.models.adapters import SITES
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.results import TraceResult
from mllm_lens.tracing.corruption import (
    Corruption,
    ImageNoise,
    Replace,
    as_corruption,
    corrupted_call,
    position_map,
)
from mllm_lens.tracing.executor import PLANS, Cell, RestorationExecutor
from mllm_lens.tracing.windows import window_layers


class CorruptionIneffectiveWarning(UserWarning):
    """The corruption barely lowered the target's probability; the trace shows little."""


#: A corruption is noted as ineffective when it lowers p(answer) by less than this, or by less
#: than :data:`INEFFECTIVE_SHARE` of the clean p when that is smaller (a rarely chosen answer).
INEFFECTIVE_DROP = 0.01
INEFFECTIVE_SHARE = 0.1


def ineffective_note(clean_prob: float, corrupted_prob: float) -> str | None:
    """What to tell the user when the corruption barely lowered p(answer) (None when it took
    enough away): a heatmap of restored p then has next to no room between the corrupted and the
    clean run. An absolute drop, not a share of p: near p = 1 a large change of the logits moves p
    little, and such a trace still shows where the answer comes back (0.998 -> 0.967 leaves 0.03)."""
    least = min(INEFFECTIVE_DROP, INEFFECTIVE_SHARE * clean_prob)
    if clean_prob - corrupted_prob >= least:
        return None
    probs = f"(clean {clean_prob:.4f}, corrupted {corrupted_prob:.4f})"
    if corrupted_prob >= clean_prob:
        what = f"the corruption did not lower the target's probability {probs}"
    else:
        what = f"the corruption lowered the target's probability by less than {least:.2g} {probs}"
    return f"{what}; this trace says little about where the fact is stored"


Positions = tuple[torch.Tensor | None, torch.Tensor | None]
Patterns = tuple[AttentionPattern | None, AttentionPattern | None]
DeepStacks = tuple[DeepStack | None, DeepStack | None]


def prepare(
    model: LensModel, probe: Probe | EncodedProbe, corrupt
) -> tuple[EncodedProbe, Corruption, torch.Tensor, torch.Tensor, Positions, Patterns, DeepStacks]:
    """Encode the probe and build clean and corrupted decoder inputs ``[1, T, d]``, with their
    M-RoPE position ids ``[3, 1, T]`` (``(None, None)`` for a 1-D decoder), attention patterns
    (``(None, None)`` for a causal decoder) and DeepStack additions (``(None, None)`` where the image
    enters through the inputs only; image noise noises them too, see :mod:`mllm_lens.tracing.corruption`)."""
    encoded = probe if isinstance(probe, EncodedProbe) else probe.encode(model)
    corruption = as_corruption(corrupt)
    call = model.decoder_call(encoded.model_inputs)
    clean = call.embeds
    corrupted = corrupted_call(corruption, model, encoded, call)
    if clean.shape == corrupted.embeds.shape and torch.equal(clean, corrupted.embeds):
        raise CorruptionError(f"the corruption {corruption} leaves the decoder inputs unchanged")
    return (
        encoded,
        corruption,
        clean,
        corrupted.embeds,
        (call.positions, corrupted.positions),
        (call.pattern, corrupted.pattern),
        (call.deepstack, corrupted.deepstack),
    )


@dataclass
class CellOutcome:
    """One restoration's answer distributions: top-k ``(token, probability)`` lists."""

    site: str
    layer: int
    layers: tuple[int, ...]
    position: int
    label: str
    target_token: str
    restored_prob: float
    clean_top: list[tuple[str, float]]
    corrupted_top: list[tuple[str, float]]
    restored_top: list[tuple[str, float]]


def _check_sites(sites: Sequence[str]) -> None:
    unknown = [site for site in sites if site not in SITES]
    if unknown or not sites:
        raise TraceConfigError(f"unknown site {unknown[0] if unknown else None!r}; expected one of {SITES}")


def check_batch_size(batch_size: int | None, memory_budget: int | None = None) -> None:
    """Refuse a batch size or memory budget (bytes) that is not a positive integer."""
    for name, value in (("batch_size", batch_size), ("memory_budget", memory_budget)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TraceConfigError(f"{name} must be an int >= 1 (or None for the default), got {value!r}")


class TraceSession:
    """``model`` + ``probe`` + ``corrupt``, prepared once (see the module docstring)."""

    def __init__(
        self,
        model: LensModel,
        probe: Probe | EncodedProbe,
        corrupt: Corruption | str | None = None,
        sites: Sequence[str] = SITES,
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        warn: bool = True,
        plan: str = "auto",
    ) -> None:
        """``warn=False`` keeps an ineffective corruption's note in :attr:`notes` without
        issuing :class:`CorruptionIneffectiveWarning` (for callers on other threads, where
        capturing warnings is not safe). ``plan``: "auto", "prefix" or "partial" (see
        :mod:`mllm_lens.tracing.executor`); the plan used is in each result's settings."""
        if plan not in PLANS:
            raise TraceConfigError(f"plan must be one of {PLANS}, got {plan!r}")
        _check_sites(sites)
        check_batch_size(batch_size, memory_budget)
        self.model = model
        self.encoded, self.corruption, clean, corrupted, positions, patterns, deepstacks = prepare(
            model, probe, corrupt
        )
        self.position_map = position_map(self.corruption, model, self.encoded)
        self.executor = RestorationExecutor(
            model,
            clean,
            corrupted,
            sites,
            positions=positions,
            patterns=patterns,
            deepstacks=deepstacks,
            batch_size=batch_size,
            memory_budget=memory_budget,
            position_map=self.position_map,
            plan=plan,
        )
        target = self.encoded.target_id
        self.clean_probs = torch.softmax(self.executor.clean_logits[0], -1)
        self.corrupted_probs = torch.softmax(self.executor.corrupted_logits[0], -1)
        self.target = int(self.clean_probs.argmax()) if target is None else target
        self.clean_prob = float(self.clean_probs[self.target])
        self.corrupted_prob = float(self.corrupted_probs[self.target])
        self.notes: list[str] = list(self.encoded.meta.get("notes", []))
        note = ineffective_note(self.clean_prob, self.corrupted_prob)
        if note is not None:
            self.notes.append(note)
            if warn:
                warnings.warn(self.notes[-1], CorruptionIneffectiveWarning, stacklevel=3)

    @property
    def sites(self) -> tuple[str, ...]:
        return self.executor.sites

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def _check(self, site: str, window: int, window_mode: str) -> None:
        if site not in self.sites:
            raise TraceConfigError(f"site {site!r} was not prepared by this session (it has {self.sites})")
        window_layers(0, window, window_mode, self.num_layers)

    def trace(
        self,
        site: str = "mlp",
        window: int = 1,
        window_mode: str = "paper",
        *,
        positions: Sequence[int] | None = None,
        progress: bool = True,
        on_cells: Callable[[list[tuple[int, int]], np.ndarray], None] | None = None,
    ) -> TraceResult:
        """A full trace of ``site``. ``on_cells(cells, scores)`` sees each finished batch of
        ``(layer, position)`` cells (for live display; raising from it stops the trace)."""
        self._check(site, window, window_mode)
        n_layers, length = self.num_layers, self.encoded.length
        swept = list(range(length)) if positions is None else sorted(set(int(p) for p in positions))
        if not swept:
            raise TraceConfigError(
                f"positions is empty: pass positions in [0, {length}) to sweep, or positions=None for all of them"
            )
        if swept and not (0 <= swept[0] and swept[-1] < length):
            raise TraceConfigError(f"positions must lie in [0, {length}), got {swept[0]}..{swept[-1]}")
        executor = self.executor
        grid = [(layer, pos) for layer in range(n_layers) for pos in swept if executor.restorable(pos)]
        cells = [Cell(site, window_layers(layer, window, window_mode, n_layers), pos) for layer, pos in grid]
        on_batch = (
            None if on_cells is None else (lambda start, probs: on_cells(grid[start : start + len(probs)], probs))
        )
        probs = self.executor.run(cells, self.target, progress=progress, desc=f"{site} trace", on_batch=on_batch)
        scores = np.full((n_layers, length), self.corrupted_prob, dtype=np.float64)
        unswept = set(range(length)) - set(swept)
        unmapped = {pos for pos in range(length) if self.executor.position_map[pos] is None}
        scores[:, sorted(unswept | unmapped)] = np.nan
        for (layer, pos), prob in zip(grid, probs, strict=True):
            scores[layer, pos] = prob
        return self._result(site, scores, window, window_mode)

    def region_curve(
        self, site: str, positions: Sequence[int], window: int = 1, window_mode: str = "paper"
    ) -> np.ndarray:
        """Target probability ``[layers]`` with ``site`` restored at all ``positions`` *together*
        in each layer's window: the layer curve of a region (a block of patches, a dragged box).
        Restoring a region jointly is not the mean of its positions' single restorations."""
        self._check(site, window, window_mode)
        picked = sorted({int(p) for p in positions})
        if not picked or picked[0] < 0 or picked[-1] >= self.encoded.length:
            raise TraceConfigError(f"positions must be a non-empty subset of [0, {self.encoded.length}), got {picked}")
        live = tuple(p for p in picked if self.executor.restorable(p))  # prefix: restoring is a no-op
        if not live:
            return np.full(self.num_layers, self.corrupted_prob)
        n = self.num_layers
        cells = [Cell(site, window_layers(layer, window, window_mode, n), live[0], live) for layer in range(n)]
        return self.executor.run(cells, self.target, progress=False, desc=f"{site} region")

    def cell(
        self, site: str, layer: int, position: int, window: int = 1, window_mode: str = "paper", top_k: int = 5
    ) -> CellOutcome:
        """Restore one cell and return the clean, corrupted and restored top-k answers."""
        self._check(site, window, window_mode)
        if not 0 <= position < self.encoded.length:
            raise TraceConfigError(f"position {position} outside the prompt's {self.encoded.length} tokens")
        layers = window_layers(layer, window, window_mode, self.num_layers)
        if self.executor.position_map[position] is None:
            raise TraceConfigError(
                f"position {position} ({self.encoded.labels[position]!r}) has no counterpart in the corrupted run "
                "(the replacement is shorter than the phrase); see mllm_lens.tracing.corruption.Replace"
            )
        if position < self.executor.p0:  # unchanged prefix: restoring is a no-op
            restored = self.corrupted_probs
        else:
            restored = self.executor.distributions([Cell(site, layers, position)])[0]
        tokenizer = self.model.tokenizer

        def top(probs: torch.Tensor) -> list[tuple[str, float]]:
            values, ids = probs.float().topk(top_k)
            return list(zip(tokenizer.convert_ids_to_tokens(ids.tolist()), values.tolist(), strict=True))

        return CellOutcome(
            site=site,
            layer=layer,
            layers=layers,
            position=position,
            label=self.encoded.labels[position],
            target_token=tokenizer.convert_ids_to_tokens(self.target),
            restored_prob=float(restored[self.target]),
            clean_top=top(self.clean_probs),
            corrupted_top=top(self.corrupted_probs),
            restored_top=top(restored),
        )

    def corrupted_tokens(self) -> list[str]:
        """The corrupted run's tokens (the clean ones unless a replacement changed them)."""
        if not isinstance(self.corruption, Replace):
            return list(self.encoded.tokens)
        ids = self.corruption.corrupted_ids(self.model, self.encoded)
        return self.model.tokenizer.convert_ids_to_tokens(ids.tolist())

    def _labels(self) -> list[str]:
        """Clean labels; a replaced phrase's positions read ``clean→corrupted`` (``→∅``: no counterpart)."""
        labels = list(self.encoded.labels)
        if not isinstance(self.corruption, Replace):
            return labels
        corrupted = self.corrupted_tokens()
        mapped = self.position_map or list(range(len(labels)))
        for pos, target in enumerate(mapped):
            if target is None:
                labels[pos] = f"{labels[pos]}→∅"
            elif corrupted[target] != self.encoded.tokens[pos]:
                labels[pos] = f"{labels[pos]}→{corrupted[target]}"
        return labels

    def _attention(self) -> dict:
        """The attention pattern the fast paths replayed, for a decoder its wrapper masks itself, and the
        DeepStack additions they replayed (and what the corruption did to them)."""
        pattern, deepstack = self.executor.clean_pattern, self.executor.clean_deepstack
        out = {} if pattern is None else {"attention": pattern.describe()}
        if deepstack is not None:
            out["deepstack"] = deepstack.describe(noised=isinstance(self.corruption, ImageNoise))
        return out

    def _result(self, site: str, scores: np.ndarray, window: int, window_mode: str) -> TraceResult:
        encoded, probe = self.encoded, self.encoded.probe
        extra = {}
        if self.position_map is not None:
            extra = {"corrupted_tokens": self.corrupted_tokens(), "position_map": list(self.position_map)}
        return TraceResult(
            scores=scores,
            clean_prob=self.clean_prob,
            corrupted_prob=self.corrupted_prob,
            target_id=self.target,
            target_token=self.model.tokenizer.convert_ids_to_tokens(self.target),
            labels=self._labels(),
            tokens=list(encoded.tokens),
            constraint_spans=dict(encoded.spans),
            constraint_kinds={c.text: c.kind for c in probe.constraints},
            image_span=encoded.image_span,
            patch_grid=(encoded.patch_layout.rows, encoded.patch_layout.cols),
            site=site,
            settings={
                "window": window,
                "window_mode": window_mode,
                "corruption": self.corruption.describe(encoded),
                "first_corrupted_position": self.executor.first_changed,
                "recomputed_from": self.executor.p0,
                **self._attention(),
                "batch_size": self.executor.batch_size,
                "plan": self.executor.last_plan,
                "prompt": encoded.prompt,
                "question": probe.question,
                "answer": probe.answer,
                "model": self.model.name,
                "dtype": str(self.model.dtype).replace("torch.", ""),
                **extra,
            },
            warnings=list(self.notes),
        )
