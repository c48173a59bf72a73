"""MultEdit: closed-form editing of a multimodal LLM's early MLP (Basu et al., NeurIPS 2024).

One edit (after ROME, Meng et al. 2022): key k = input of layer l's MLP output projection at
the last visual-constraint token; value v* = v0 + δ (see :mod:`mllm_lens.editing.keys`); the
weight W* = argmin ‖W k − v*‖² + λ‖W − W0‖², i.e. the rank-one

    W* = W0 + (v* − W0 k) kᵀ / (λ + kᵀk)          (λ = 0.01)

which equals the paper's (λW0 + v* kᵀ)(λI + k kᵀ)⁻¹ without any d_in × d_in inverse (``cov_weight=None``;
the default weighs the update by key statistics, below). A layer whose
MLP is a mixture-of-experts block has no such W (:mod:`mllm_lens.models.moe`): its MLP edits are
refused, before any forward pass, with the reason.

Several edits (after MEMIT, Meng et al. 2023): keys K ``[d_in, n]``, residuals R = V* − W0 K,
ΔW = R Kᵀ(λI + K Kᵀ)⁻¹ = R (λI_n + KᵀK)⁻¹ Kᵀ (Woodbury), solved as an n × n system (or the
d_in × d_in one when that is smaller). Over several layers the residual is spread as in
MEMIT: δ is optimised on the residual stream after the last edited layer L (for the MLP site
that is the same as adding δ to L's MLP output), z = h_L + δ; then, lowest layer first, each
layer's keys and the current h_L are re-measured and the layer takes (z − h_L)/(layers left).
Multi-layer edits are MLP-only (an attention output feeds its own layer's MLP, so the sum
argument does not hold).

Edits use MEMIT's key statistics by default: ΔW = R Kᵀ (w·C + K Kᵀ)⁻¹ with C = E[k kᵀ] of the
edited projection's input over a corpus of prompts (:mod:`mllm_lens.editing.key_stats`, cached on
disk), so that directions other inputs use are expensive to change and the edits do not spill
onto other questions. A single edit uses C shrunk toward the identity,
C_ρ = (1 − ρ)C + ρ·mean(diag C)·I, and writes r along C_ρ⁻¹k: the paper's rank-one update
(``cov_weight=None``) writes along k itself, which every key with a large component on k
(other countries' questions, on the demo model) also reads.

Options beyond the paper: ``key_token="last"`` reads the key at the prompt's last token;
``preserve=[probes]`` adds those prompts' keys with zero residual to the least squares (the
key statistics, sampled from chosen prompts).

Everything is solved in float32 and cast back to the weight's dtype.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch

from mllm_lens.editing.handle import Edit, guarded
from mllm_lens.editing.key_stats import covariance_update, key_second_moment
from mllm_lens.editing.keys import EDIT_SITES, capture, check_layers, optimize_values, preservation_keys, projection
from mllm_lens.editing.requests import EditRequest, as_requests, encode_requests, key_position
from mllm_lens.errors import EditError
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe

METHODS = ("multedit", "finetune", "constrained_finetune")
#: ‖δ‖ ≤ DEFAULT_CLAMP·‖v0‖. The released code's 1e-4 leaves the answer unchanged; a loose clamp
#: overshoots and costs specificity. Tuned on the session-14 demo model's tuning requests only
#: (benchmarks/RESULTS.md, "MultEdit", session 14): single edits 1.0 -> efficacy 0.78, 1.5 -> 0.99 at
#: a 1.4-point specificity drop, 3 -> 6.4 points; batches of 10 at 1.5 drop 3.9 points, at 6 20.
DEFAULT_CLAMP = 1.5
#: Adam on δ: the paper's lr 0.1 × 10 steps reaches efficacy ≈ 0.05 on the demo model; 0.5 × 30
#: ≈ 0.93. With the paper's weight decay (1e-3) more steps do not help: near p = 1 the decay
#: outweighs the shrinking loss gradient and δ is pulled back (40 steps 0.91, 60 steps 0.90).
DEFAULT_LR = 0.5
DEFAULT_STEPS = 30
DEFAULT_LAMBDA = 0.01
#: w in ΔW = R Kᵀ (w·C + K Kᵀ)⁻¹ for batch edits. C is a per-token mean and K Kᵀ a sum over the
#: batch, so w weighs the corpus like w edited keys (MEMIT weighs it 15000). Tuned on the shipped
#: demo model's tuning requests only (benchmarks/edit_tuning.py; benchmarks/RESULTS.md, session 17):
#: the smallest w on the grid 300, 600, 1000, 1500, 2000 (clamp 1.5) whose tuning batch of 36 drops
#: <= 5 points at efficacy >= 0.95 on both tuning sets. Batch of 36: w = 300 drops 7.7 points at
#: efficacy 1.00, 1000 4.6 at 0.99, 2000 3.1 at 0.93 (generalisation 0.79 -> 0.72 -> 0.60).
DEFAULT_COV_WEIGHT = 1000.0
#: w for a single edit: for one key w only scales the written share of r, kᵀC_ρ⁻¹k / (w + kᵀC_ρ⁻¹k)
#: (≈ 0.999 on the demo model), so a small w writes all of it.
SINGLE_COV_WEIGHT = 1.0
#: ρ of C_ρ for a single edit, kept for the session-17 model. Tuned on the session-15 demo model's
#: tuning requests only (benchmarks/RESULTS.md, session 15; 12 flipped capitals / 36 facts over three
#: relations): ρ = 0 (C alone) drops 0.26 / 0.37 points of specificity but generalises 0.84 / 0.82;
#: ρ = 1 (the paper's k) 1.45 / 1.56 points at 0.92 / 0.93; ρ = 0.03 0.49 / 0.41 points at 0.92 / 0.93.
#: Batches keep ρ = 0: with a large w any shrinkage is a large ridge (batches of 10 at w = 300:
#: efficacy 0.99 -> 0.95, drop 2.7 -> 5.4).
SINGLE_SHRINKAGE = 0.03


class EditIneffectiveWarning(UserWarning):
    """δ could not make the new answer likely at this key token and layer."""


def _weak_note(items, probs) -> str | None:
    """What to tell the user when δ left some new answers unlikely (None when all reached 0.5)."""
    weak = [(item, p) for item, p in zip(items, probs, strict=True) if p < 0.5]
    if not weak:
        return None
    item, p = weak[0]
    other_key = "" if item.request.key_token == "last" else ", or key_token='last'"
    return (
        f"{len(weak)} of {len(items)} edit(s) reached p(new answer) < 0.5 with δ in place (e.g. {p:.3f} for "
        f"{item.request.describe()}, key token {item.encoded.tokens[item.position]!r}): this layer/token may not "
        f"carry the fact, or the new answer's output embedding is weak (try another layer, more steps or a "
        f"larger lr{other_key})"
    )


def rank_one_update(key: torch.Tensor, residual: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW = r kᵀ / (λ + kᵀk) in float32 (r = v* − W0 k: the wanted change of the output)."""
    key, residual = key.float(), residual.float()
    return torch.outer(residual, key) / (lam + key @ key)


def multi_key_update(keys: torch.Tensor, residuals: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λI + K Kᵀ)⁻¹ for keys ``[d_in, n]`` and residuals ``[d_out, n]`` (float32)."""
    keys, residuals = keys.float(), residuals.float()
    d_in, n = keys.shape
    if n <= d_in:  # Woodbury: R (λI_n + KᵀK)⁻¹ Kᵀ
        gram = keys.T @ keys + lam * torch.eye(n, device=keys.device)
        return torch.linalg.solve(gram, residuals.T).T @ keys.T
    gram = keys @ keys.T + lam * torch.eye(d_in, device=keys.device)
    return torch.linalg.solve(gram, keys @ residuals.T).T  # gram is symmetric


def _update(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    lam: float,
    moment: torch.Tensor | None = None,
    weight: float = 0.0,
    shrinkage: float = 0.0,
) -> torch.Tensor:
    """keys ``[n, d_in]``, residuals ``[n, d_out]`` -> ΔW ``[d_out, d_in]`` (with key statistics
    ``moment`` when given)."""
    if moment is not None:
        return covariance_update(keys, residuals, moment, weight, shrinkage)
    if keys.shape[0] == 1:
        return rank_one_update(keys[0], residuals[0], lam)
    return multi_key_update(keys.T, residuals.T, lam)


def _add(param: torch.nn.Parameter, delta: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_((param.float() + delta.to(param.device)).to(param.dtype))


def _with_preserved(model, keys, residuals, layer, site, preserve, preserve_weight):
    """Append zero-residual keys of ``preserve`` probes (MEMIT's covariance term, sampled)."""
    if not preserve:
        return keys, residuals
    kept = preservation_keys(model, preserve, layer, site) * preserve_weight**0.5
    return torch.cat([keys, kept]), torch.cat([residuals, residuals.new_zeros(len(kept), residuals.shape[1])])


def _multedit(
    model,
    items,
    layers,
    site,
    params,
    *,
    lam,
    steps,
    lr,
    weight_decay,
    clamp,
    stop_prob,
    preserve,
    preserve_weight,
    cov_weight,
    shrinkage,
    stats_probes,
    warn,
) -> dict:
    last = layers[-1]
    # key statistics of the unedited model, for every layer before any of them changes
    moments = {
        layer: None if cov_weight is None else key_second_moment(model, layer, site, stats_probes) for layer in layers
    }

    deltas, v0s, probs = optimize_values(
        model, items, last, site, steps=steps, lr=lr, weight_decay=weight_decay, clamp=clamp, stop_prob=stop_prob
    )
    note = _weak_note(items, probs.tolist())
    if note and warn:
        warnings.warn(note, EditIneffectiveWarning, stacklevel=4)
    info = {
        "notes": [note] if note else [],
        "delta_prob": probs.tolist(),
        "delta_norm_ratio": (deltas.norm(dim=-1) / v0s.norm(dim=-1).clamp_min(1e-30)).tolist(),
        "deltas": deltas,
    }
    if len(layers) == 1:
        keys, _, _ = capture(model, items, last, site)
        info["keys"] = keys
        keys, residuals = _with_preserved(model, keys, deltas, last, site, preserve, preserve_weight)
        _add(params[0], _update(keys, residuals, lam, moments[last], cov_weight or 0.0, shrinkage))
        return info
    _, _, h_clean = capture(model, items, last, site, hidden_layer=last)
    assert h_clean is not None  # asked for with hidden_layer
    z = h_clean + deltas
    for i, (layer, param) in enumerate(zip(layers, params, strict=True)):
        keys, _, h_now = capture(model, items, layer, site, hidden_layer=last)
        assert h_now is not None
        residuals = (z - h_now) / (len(layers) - i)
        keys, residuals = _with_preserved(model, keys, residuals, layer, site, preserve, preserve_weight)
        _add(param, _update(keys, residuals, lam, moments[layer], cov_weight or 0.0, shrinkage))
    return info


def edit_many(
    model: LensModel,
    requests: EditRequest | Iterable[EditRequest],
    layers: int | Sequence[int] | None = None,
    site: str = "mlp",
    *,
    method: str = "multedit",
    lam: float = DEFAULT_LAMBDA,
    steps: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    clamp: float | None = DEFAULT_CLAMP,
    stop_prob: float | None = None,
    preserve: Sequence[Probe] | None = None,
    preserve_weight: float = 1.0,
    cov_weight: float | str | None = "auto",
    shrinkage: float | str = "auto",
    stats_probes: Sequence[Probe] | None = None,
    key_token: str | None = None,
    warn: bool = True,
    **baseline_options,
) -> Edit:
    """Apply several edits at once and return the reversible :class:`Edit` handle.

    ``layers``: one layer or several (MEMIT-style spreading, see the module docstring); default
    :func:`causal_layer` of the first request. ``method``: ``"multedit"`` (closed form),
    ``"finetune"`` or ``"constrained_finetune"`` (:mod:`mllm_lens.editing.baselines`; they take
    ``steps``, ``lr``, ``weight_decay`` and ``epsilon``). MultEdit's defaults: the paper's λ = 0.01
    and weight decay 1e-3, but Adam lr 0.5 for 30 steps (the paper's lr 0.1 × 10 steps moves δ too
    little on the demo model) and ``clamp`` = 1.5 (‖δ‖ ≤ 1.5‖v0‖; the released 1e-4 is a bug);
    ``stop_prob`` stops δ's optimisation once the new answer reaches that probability.
    ``key_token``: ``"constraint"`` (paper) or ``"last"``, for every request (default: each
    request's own). ``preserve``: probes whose keys (every text token) the update should leave unchanged: their
    keys join the least squares with zero residual (weight ``preserve_weight``) -- MEMIT's
    key-covariance term estimated from samples, solved in the same n × n form. ``cov_weight``: w of
    the key statistics C (:mod:`mllm_lens.editing.key_stats`, over ``stats_probes``, default the
    demo world's questions); ``"auto"`` uses :data:`DEFAULT_COV_WEIGHT` for batches and
    :data:`SINGLE_COV_WEIGHT` for a single edit, ``None`` the paper's plain update (λ, no C).
    ``shrinkage``: ρ of C_ρ = (1 − ρ)C + ρ·mean(diag C)·I in [0, 1]; ``"auto"`` is
    :data:`SINGLE_SHRINKAGE` for a single edit and 0 for batches. ``warn=False``:
    a weak MultEdit's note goes only to ``edit.info["notes"]``, not to :class:`EditIneffectiveWarning`.
    """
    if method not in METHODS:
        raise EditError(f"unknown editing method {method!r}; expected one of {METHODS}")
    if site not in EDIT_SITES:
        raise EditError(f"cannot edit site {site!r}; expected one of {EDIT_SITES}")
    reqs = as_requests(requests)
    if key_token is not None:
        reqs = [dataclasses.replace(r, key_token=key_token) for r in reqs]
    if layers is None:  # a model with a layer it cannot edit is refused before the trace that picks one
        for layer in range(model.num_layers):
            projection(model, layer, site)
        layers = causal_layer(model, reqs[0].probe, site, constraint=reqs[0].constraint, key_token=reqs[0].key_token)
    layer_list = check_layers(model, layers)
    for layer in layer_list:
        projection(model, layer, site)
    if site == "attn" and len(layer_list) > 1 and method == "multedit":
        raise EditError("multi-layer MultEdit spreads the residual over MLP outputs only; use site='mlp'")
    items = encode_requests(model, reqs)
    modules = [projection(model, layer, site) for layer in layer_list]
    params = [cast(torch.nn.Parameter, module.weight) for module in modules]
    with guarded(params) as originals:
        if method == "multedit":
            if baseline_options:
                raise EditError(f"unknown MultEdit options {sorted(baseline_options)}")
            hyper: dict[str, Any] = dict(
                lam=lam, steps=steps or DEFAULT_STEPS, lr=lr or DEFAULT_LR, clamp=clamp, stop_prob=stop_prob
            )
            single = len(reqs) == 1
            if cov_weight == "auto":
                cov_weight = SINGLE_COV_WEIGHT if single else DEFAULT_COV_WEIGHT
            if cov_weight is not None and (isinstance(cov_weight, str) or cov_weight <= 0):
                raise EditError(f"cov_weight must be a positive number, 'auto' or None, got {cov_weight!r}")
            if shrinkage == "auto":
                shrinkage = SINGLE_SHRINKAGE if single else 0.0
            if isinstance(shrinkage, str) or not 0 <= shrinkage <= 1:
                raise EditError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
            hyper.update(preserve=preserve, preserve_weight=preserve_weight, cov_weight=cov_weight)
            hyper["shrinkage"] = float(shrinkage) if cov_weight is not None else None
            hyper["stats_probes"] = stats_probes
            hyper["weight_decay"] = 1e-3 if weight_decay is None else weight_decay
            info = _multedit(model, items, layer_list, site, params, **hyper, warn=warn)
            hyper["preserve"] = len(preserve or ())  # the record keeps the counts, not the probes
            hyper["stats_probes"] = None if stats_probes is None else len(stats_probes)
        else:
            from mllm_lens.editing.baselines import finetune

            given = {"steps": steps, "lr": lr, "weight_decay": weight_decay}
            hyper = {**{k: v for k, v in given.items() if v is not None}, **baseline_options}
            hyper["constrained"] = method == "constrained_finetune"
            info, hyper = finetune(model, items, modules, **hyper)
        info["old_answers"] = model.tokenizer.convert_ids_to_tokens([item.old_id for item in items])
        handle = Edit(model, method, reqs, layer_list, site, hyper, params, originals, info=info)
    return handle


def edit(
    model: LensModel,
    probe: Probe,
    new_answer: str,
    layer: int | Sequence[int] | None = None,
    site: str = "mlp",
    *,
    constraint: str | None = None,
    key_token: str = "constraint",
    method: str = "multedit",
    **hyperparameters,
) -> Edit:
    """Make ``probe``'s question answered by ``new_answer`` (one edit; see :func:`edit_many`).

    Use as ``with ml.edit(model, probe, "Rome", layer=1): ...`` to undo on leaving the block.
    """
    request = EditRequest(probe, new_answer, constraint=constraint, key_token=key_token)
    return edit_many(model, [request], layer, site, method=method, **hyperparameters)


@torch.no_grad()
def causal_layer(
    model: LensModel,
    probe: Probe,
    site: str = "mlp",
    *,
    constraint: str | None = None,
    key_token: str = "constraint",
    corrupt=None,
) -> int:
    """The layer whose ``site`` output, restored at the key token, brings the answer back most:
    a one-position causal trace, with the visual constraint noised (``key_token="constraint"``)
    or the image's visual tokens noised (``key_token="last"``) unless ``corrupt`` is given."""
    from mllm_lens.tracing.corruption import image_noise, noise
    from mllm_lens.tracing.session import TraceSession

    encoded = probe.encode(model)
    position = key_position(encoded, constraint)
    if key_token == "last":
        position = encoded.length - 1
    if corrupt is None and key_token == "last":
        corrupt = image_noise()
    elif corrupt is None:
        corrupt = noise(constraint or next(c.text for c in probe.constraints if c.kind == "visual"))
    # warn=False: an ineffective corruption still yields a (flat) answer, and this runs on the
    # Explorer's worker thread, where swapping the process-wide warning filters is not safe
    session = TraceSession(model, encoded, corrupt, sites=(site,), warn=False)
    result = session.trace(site, positions=[position], progress=False)
    return int(result.scores[:, position].argmax())
