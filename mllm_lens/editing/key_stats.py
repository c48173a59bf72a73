"""Key statistics for edits: the second moment C = E[k kᵀ] of an edited projection's input.

MEMIT (Meng et al., 2023) keeps a batch edit from spilling onto other inputs by weighting the
least squares with the keys the layer usually sees:

    ΔW = R Kᵀ (w·C + K Kᵀ)⁻¹

with K the edited keys ``[d_in, n]``, R their residuals and C the uncentred second moment of
the projection's input over a corpus of prompts (every text token). Directions the corpus uses
a lot are expensive to change, directions only the edited keys use are cheap. A single edit
uses C too, shrunk toward the identity (:func:`shrunk`): its update then points along C_ρ⁻¹k
instead of k, which leaves other questions' answers alone without losing rephrasings.

C is computed once per model, layer and site and cached on disk (``$MLLM_LENS_CACHE``, else
``$XDG_CACHE_HOME/mllm_lens``, else ``~/.cache/mllm_lens``) under a fingerprint of the weights
(every parameter's shape, dtype, sum and sum of squares, so an applied edit or another model
gives another file) and of the corpus; written atomically.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mllm_lens.editing.keys import _capture_all, projection
from mllm_lens.io import atomic_path
from mllm_lens.models.fingerprint import weights_fingerprint
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe

#: Prompts in the default corpus: the demo world's questions (every template and paraphrase).
DEFAULT_CORPUS_SIZE = 400


def cache_dir() -> Path:
    """Where key statistics are kept (see the module docstring)."""
    explicit = os.environ.get("MLLM_LENS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mllm_lens"


def default_corpus(n: int = DEFAULT_CORPUS_SIZE, seed: int = 0) -> list[Probe]:
    """``n`` demo-world questions (flags of the training countries, every question form)."""
    from mllm_lens.data import world

    records = world.generate(seed=seed, render=False)
    picked = random.Random(seed).sample(records, min(n, len(records)))
    return [record.probe(with_answer=False) for record in picked]


def _corpus_fingerprint(probes: Sequence[Probe]) -> str:
    digest = hashlib.sha256()
    for probe in probes:
        digest.update(probe.question.encode())
        digest.update(probe.image.tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def second_moment(model: LensModel, layer: int, site: str, probes: Sequence[Probe], progress: bool = True):
    """C = E[k kᵀ] ``[d_in, d_in]`` (float64 sums, returned as float32) over the text tokens of ``probes``."""
    module = projection(model, layer, site)
    total = torch.zeros(module.in_features, module.in_features, dtype=torch.float64)
    count = 0
    for probe in tqdm(probes, desc=f"key statistics, layer {layer}", disable=not progress, unit="prompt"):
        encoded = probe.encode(model)
        keys = _capture_all(model, module, *model.decoder_call(encoded.model_inputs)).double()
        start, end = encoded.image_span
        keys = torch.cat([keys[:start], keys[end:]])
        total += keys.T @ keys
        count += keys.shape[0]
    return (total / max(count, 1)).float(), count


def key_second_moment(
    model: LensModel,
    layer: int,
    site: str = "mlp",
    probes: Sequence[Probe] | None = None,
    *,
    progress: bool = True,
    use_cache: bool = True,
) -> torch.Tensor:
    """C for ``layer``'s ``site`` projection, from the disk cache when it holds this model's."""
    projection(model, layer, site)  # refuse a layer without one before building the corpus
    corpus = list(probes) if probes is not None else default_corpus()
    name = f"{weights_fingerprint(model)}_{site}{layer}_{_corpus_fingerprint(corpus)}.safetensors"
    path = cache_dir() / "key_stats" / name
    if use_cache and path.exists():
        return load_file(str(path))["second_moment"]
    moment, count = second_moment(model, layer, site, corpus, progress=progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"second_moment": moment.contiguous()}, str(tmp), metadata={"keys": str(count)})
    return moment


def shrunk(moment: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(1 − ρ)·C + ρ·mean(diag C)·I: C shrunk toward a multiple of the identity (ρ = ``shrinkage``).

    ρ = 0 is C itself; ρ = 1 treats every direction alike, which for one edit gives the paper's
    rank-one direction k. In between, directions other inputs use are still expensive to change,
    but the rarely used ones (where a rephrased question's key differs) are not made cheap without
    bound: whitening by C alone keeps single edits local but loses generalisation."""
    if shrinkage == 0:
        return moment
    scale = moment.diagonal().mean()
    identity = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    return (1 - shrinkage) * moment + shrinkage * scale * identity


def covariance_update(
    keys: torch.Tensor, residuals: torch.Tensor, moment: torch.Tensor, weight: float, shrinkage: float = 0.0
) -> torch.Tensor:
    """ΔW = R Kᵀ (w·C_ρ + K Kᵀ + εI)⁻¹ for keys ``[n, d_in]`` and residuals ``[n, d_out]``, with
    C_ρ = :func:`shrunk` (C, ``shrinkage``); solved in float64 and returned in float32; ε = 1e-6 ×
    the mean diagonal keeps a rank-deficient C (a small corpus) solvable. For one key this is
    r (C_ρ⁻¹k)ᵀ / (w + kᵀC_ρ⁻¹k) (Sherman–Morrison): w only scales how much of r is written."""
    keys, residuals = keys.double(), residuals.double()
    system = weight * shrunk(moment.double().to(keys.device), shrinkage) + keys.T @ keys
    system = system + 1e-6 * system.diagonal().mean() * torch.eye(system.shape[0], device=keys.device, dtype=keys.dtype)
    return torch.linalg.solve(system, keys.T @ residuals).T.float()  # system is symmetric
