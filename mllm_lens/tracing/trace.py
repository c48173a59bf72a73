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

from collections.abc import Sequence

from mllm_lens.models.adapters import SITES
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.results import TraceResult
from mllm_lens.tracing.corruption import Corruption
from mllm_lens.tracing.session import CorruptionIneffectiveWarning, TraceSession, prepare

__all__ = ["CorruptionIneffectiveWarning", "prepare", "trace", "trace_sites"]


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
    plan: str = "auto",
) -> TraceResult:
    """Trace where the answer to ``probe`` is restored, for one ``site``.

    ``corrupt``: :func:`~mllm_lens.noise` (default, on the visual constraint),
    :func:`~mllm_lens.replace` or :func:`~mllm_lens.image_noise`. ``window``/``window_mode``:
    see :mod:`mllm_lens.tracing.windows`. ``positions`` restricts the swept positions (default:
    all). ``batch_size`` overrides the batch size derived from ``memory_budget`` (bytes).
    ``plan``: "auto" (default), "prefix" or "partial" restarts (see
    :mod:`mllm_lens.tracing.executor`; ``result.settings["plan"]`` says which ran).
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
        plan=plan,
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
    plan: str = "auto",
) -> dict[str, TraceResult]:
    """:func:`trace` for several sites at once (default hidden, MLP and attention), sharing
    the clean run and the prefix cache: ``{site: TraceResult}``."""
    session = TraceSession(model, probe, corrupt, sites, batch_size=batch_size, memory_budget=memory_budget, plan=plan)
    return {site: session.trace(site, window, window_mode, positions=positions, progress=progress) for site in sites}
