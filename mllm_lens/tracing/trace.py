"""Multimodal causal tracing (Basu et al., NeurIPS 2024; after ROME, Meng et al. 2022).

A visual question's constraint is corrupted (its phrase replaced, or its embeddings or the
image's visual tokens noised). Then, one (layer window, position) cell at a time, the clean
output of a site -- the residual ``hidden`` state after a decoder layer, the ``mlp`` output or
the ``attn`` output -- is restored into the corrupted run, and the probability of the target
answer token at the last position is measured. Cells whose restoration brings the answer back
are where the model keeps what the constraint contributes.

``trace`` returns a :class:`~mllm_lens.results.TraceResult` with ``scores[layer, position]``.
It runs on the prefix-cached, batched executor (:mod:`mllm_lens.tracing.executor`); the
plain per-cell algorithm in :mod:`mllm_lens.tracing.reference` is its test oracle.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mllm_lens.errors import CorruptionError, TraceConfigError
from mllm_lens.models.adapters import SITES
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.results import TraceResult
from mllm_lens.tracing.corruption import Corruption, as_corruption
from mllm_lens.tracing.executor import Cell, RestorationExecutor
from mllm_lens.tracing.windows import window_layers


class CorruptionIneffectiveWarning(UserWarning):
    """The corruption did not lower the target's probability; the trace shows little."""


def prepare(
    model: LensModel, probe: Probe | EncodedProbe, corrupt
) -> tuple[EncodedProbe, Corruption, torch.Tensor, torch.Tensor]:
    """Encode the probe and build clean and corrupted decoder inputs ``[1, T, d]``."""
    encoded = probe if isinstance(probe, EncodedProbe) else probe.encode(model)
    corruption = as_corruption(corrupt)
    clean = model.decoder_inputs(encoded.model_inputs)
    corrupted = corruption.apply(model, encoded, clean)
    if torch.equal(clean, corrupted):
        raise CorruptionError(f"the corruption {corruption} leaves the decoder inputs unchanged")
    return encoded, corruption, clean, corrupted


def trace(
    model: LensModel,
    probe: Probe | EncodedProbe,
    corrupt: Corruption | str | None = None,
    site: str = "mlp",
    window: int = 1,
    window_mode: str = "paper",
    *,
    positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
) -> TraceResult:
    """Trace where the answer to ``probe`` is restored, for one ``site``.

    ``corrupt``: :func:`~mllm_lens.noise` (default, on the visual constraint),
    :func:`~mllm_lens.replace` or :func:`~mllm_lens.image_noise`. ``window``/``window_mode``:
    see :mod:`mllm_lens.tracing.windows`. ``positions`` restricts the swept positions (default:
    all). ``batch_size`` overrides the batch size derived from ``memory_budget`` (bytes).
    """
    return trace_sites(
        model,
        probe,
        corrupt,
        (site,),
        window,
        window_mode,
        positions=positions,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
    )[site]


def trace_sites(
    model: LensModel,
    probe: Probe | EncodedProbe,
    corrupt: Corruption | str | None = None,
    sites: Sequence[str] = SITES,
    window: int = 1,
    window_mode: str = "paper",
    *,
    positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
) -> dict[str, TraceResult]:
    """:func:`trace` for several sites at once (default hidden, MLP and attention), sharing
    the clean run, the prefix cache and the batches: ``{site: TraceResult}``."""
    unknown = [site for site in sites if site not in SITES]
    if unknown or not sites:
        raise TraceConfigError(f"unknown site {unknown[0] if unknown else None!r}; expected one of {SITES}")
    n_layers = model.num_layers
    window_layers(0, window, window_mode, n_layers)  # validates window against the model
    encoded, corruption, clean, corrupted = prepare(model, probe, corrupt)
    length = encoded.length
    swept = list(range(length)) if positions is None else sorted(set(int(p) for p in positions))
    if swept and not (0 <= swept[0] and swept[-1] < length):
        raise TraceConfigError(f"positions must lie in [0, {length}), got {swept[0]}..{swept[-1]}")

    executor = RestorationExecutor(model, clean, corrupted, sites, batch_size=batch_size, memory_budget=memory_budget)
    target = encoded.target_id
    if target is None:
        target = int(executor.clean_logits[0].argmax())
    clean_prob = float(torch.softmax(executor.clean_logits[0], -1)[target])
    corrupted_prob = float(torch.softmax(executor.corrupted_logits[0], -1)[target])

    grid = [(site, layer, pos) for site in sites for layer in range(n_layers) for pos in swept if pos >= executor.p0]
    cells = [Cell(site, window_layers(layer, window, window_mode, n_layers), pos) for site, layer, pos in grid]
    probs = executor.run(cells, target, progress=progress, desc=f"{'/'.join(sites)} trace")
    scores = {site: np.full((n_layers, length), corrupted_prob, dtype=np.float64) for site in sites}
    for site in sites:
        if positions is not None:
            scores[site][:, sorted(set(range(length)) - set(swept))] = np.nan
    for (site, layer, pos), prob in zip(grid, probs, strict=True):
        scores[site][layer, pos] = prob

    notes = []
    if corrupted_prob >= clean_prob:
        notes.append(
            f"the corruption did not lower the target's probability (clean {clean_prob:.4f}, "
            f"corrupted {corrupted_prob:.4f}); this trace says little about where the fact is stored"
        )
        warnings.warn(notes[-1], CorruptionIneffectiveWarning, stacklevel=3)
    probe_obj = encoded.probe
    settings = {
        "window": window,
        "window_mode": window_mode,
        "corruption": corruption.describe(encoded),
        "first_corrupted_position": executor.p0,
        "batch_size": executor.batch_size,
        "prompt": encoded.prompt,
        "question": probe_obj.question,
        "answer": probe_obj.answer,
        "model": model.name,
        "dtype": str(model.dtype).replace("torch.", ""),
    }
    return {
        site: TraceResult(
            scores=scores[site],
            clean_prob=clean_prob,
            corrupted_prob=corrupted_prob,
            target_id=target,
            target_token=model.tokenizer.convert_ids_to_tokens(target),
            labels=list(encoded.labels),
            tokens=list(encoded.tokens),
            constraint_spans=dict(encoded.spans),
            constraint_kinds={c.text: c.kind for c in probe_obj.constraints},
            image_span=encoded.image_span,
            patch_grid=(encoded.patch_layout.rows, encoded.patch_layout.cols),
            site=site,
            settings=dict(settings),
            warnings=list(notes),
        )
        for site in sites
    }
