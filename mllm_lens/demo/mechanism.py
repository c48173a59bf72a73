"""Does a model route facts through the visual constraint? The measures of the demo model card.

Each measure uses the library's defaults (no per-model overrides), on demo-world questions
drawn with seeds the training never used:

* :func:`constraint_noise_ratio` -- mean p(answer) with the visual constraint noised (ROME's 3σ,
  :func:`~mllm_lens.noise`) over mean clean p(answer);
* :func:`replace_switch_rate` -- the visual constraint replaced by another country's name
  (:func:`~mllm_lens.replace`, a phrase of another length): how often the answer becomes that
  country's fact;
* :func:`role_profile` -- the MLP causal trace (window 1) averaged per layer and token role
  (image, visual constraint, textual constraint, other text, last), as in the paper's figures;
* :func:`knockout_figures` -- top-k patches by the default ranking knocked out vs k random ones
  (:func:`knockout_curve`: the same at several k);
* :func:`edit_figures` -- MultEdit with the paper's key on requests held out from any tuning;
* :func:`gate_leak` -- whether a corruption's noise opens the route gate
  (:mod:`mllm_lens.demo.route_gate`): image reads of text positions other than the readers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from mllm_lens.data import world
from mllm_lens.data.records import VQARecord
from mllm_lens.demo.route_gate import reader_ids
from mllm_lens.models.lens_model import LensModel
from mllm_lens.tracing.corruption import image_noise, noise, replace
from mllm_lens.tracing.session import TraceSession

ROLES = ("image", "visual", "textual", "other", "last")
#: The model card's headline figures, in the order it prints them.
REPORTED = (
    "accuracy",
    "constraint_noise_ratio",
    "replace_switch_rate",
    "edit_efficacy",
    "edit_generalisation",
    "edit_specificity_drop",
    "batch10_specificity_drop",
    "batch50_specificity_drop",
    "batch50_efficacy",
    "topk_knockout_drop",
    "random_knockout_drop",
    "flow_auroc_best_layer",
    "confidence_auroc",
    "gate_leak_phrase_noise",
    "gate_leak_image_noise",
)
_YES_NO_RELATION = {"in_continent": "continent", "uses_currency": "currency"}


def mechanism_records(n: int, seed: int = 2024, templates: Sequence[str] | None = None) -> list[VQARecord]:
    """``n`` demo-world questions on fresh renderings of the training countries."""
    rng = random.Random(seed)
    forms = [t for t in world.TEMPLATES if templates is None or t.name in templates]
    countries = world.training_countries()
    records = []
    for i in range(n):
        template = forms[i % len(forms)]
        records.append(world.make_record(rng.choice(countries), template, rng.randrange(3), rng))
    return records


def _session(model: LensModel, probe, corrupt, site: str = "mlp") -> TraceSession:
    return TraceSession(model, probe, corrupt, sites=(site,), warn=False)


def constraint_noise_ratio(model: LensModel, records: Sequence[VQARecord]) -> dict:
    """Mean corrupted p(answer) / mean clean p(answer), with noise on the visual constraint."""
    clean, corrupted = [], []
    for record in records:
        session = _session(model, record.probe(), noise())
        clean.append(session.clean_prob)
        corrupted.append(session.corrupted_prob)
    return {
        "constraint_noise_ratio": float(np.sum(corrupted) / np.sum(clean)),
        "clean_p": float(np.mean(clean)),
        "noised_p": float(np.mean(corrupted)),
        "noise_n": len(records),
    }


def switched_question(record: VQARecord, rng: random.Random) -> tuple[str, str]:
    """Another training country whose answer to ``record``'s question differs, and that answer."""
    template = world.template(record.meta["template"])
    relation = _YES_NO_RELATION.get(template.relation, template.relation)
    own = world.fact(record.subject, relation)
    other = rng.choice([c for c in world.training_countries() if world.fact(c, relation) != own])
    if template.relation in _YES_NO_RELATION:
        return other, "yes" if world.fact(other, relation) == record.textual_constraints[0] else "no"
    return other, world.fact(other, relation)


def replace_switch_rate(model: LensModel, records: Sequence[VQARecord], seed: int = 0) -> dict:
    """Share of questions whose top answer becomes the named country's after
    ``replace(visual constraint, other country)`` (the ``country`` template has no named form)."""
    rng = random.Random(seed)
    hits = []
    for record in records:
        if record.meta["template"] == "country":
            continue
        other, expected = switched_question(record, rng)
        session = _session(model, record.probe(), replace(record.main_entity, other))
        top = model.tokenizer.convert_ids_to_tokens(int(session.corrupted_probs.argmax()))
        hits.append(top == expected)
    return {"replace_switch_rate": float(np.mean(hits)), "switch_n": len(hits)}


def token_roles(result) -> list[str]:
    """The role of each position of a trace result (see :data:`ROLES`)."""
    roles = ["other"] * len(result.labels)
    start, end = result.image_span
    roles[start:end] = ["image"] * (end - start)
    for text, (a, b) in result.constraint_spans.items():
        roles[a:b] = [result.constraint_kinds[text]] * (b - a)
    roles[-1] = "last"
    return roles


def role_profile(model: LensModel, records: Sequence[VQARecord], site: str = "mlp") -> dict:
    """Mean indirect effect ``[layers, roles]`` of the ``site`` trace (window 1, noise on the
    visual constraint), and where it peaks. Per question the IE of a role is its best position; a
    role no question has (e.g. no textual constraint among ``records``) is ``None``, not NaN."""
    profiles = []
    for record in records:
        result = _session(model, record.probe(), noise(), site).trace(site, progress=False)
        roles = token_roles(result)
        effect = result.indirect_effect
        row = np.full((effect.shape[0], len(ROLES)), np.nan)
        for j, role in enumerate(ROLES):
            columns = [i for i, r in enumerate(roles) if r == role]
            if columns:
                row[:, j] = np.nanmax(effect[:, columns], axis=1)
        profiles.append(row)
    stacked = np.stack(profiles)
    present = ~np.isnan(stacked).all(axis=(0, 1))  # roles some question has (not every one has a textual constraint)
    mean = np.full(stacked.shape[1:], np.nan)
    mean[:, present] = np.nanmean(stacked[:, :, present], axis=0)
    layer, peak = np.unravel_index(int(np.nanargmax(mean)), mean.shape)
    return {
        "profile": {r: [round(float(v), 4) for v in mean[:, j]] if present[j] else None for j, r in enumerate(ROLES)},
        "peak_layer": int(layer),
        "peak_role": ROLES[int(peak)],
        "n": len(records),
    }


def knockout_figures(model: LensModel, records: Sequence[VQARecord], k: int = 8, repeats: int = 20) -> dict:
    """Mean drop of p(answer) with the top-``k`` patches (default ranking) knocked out, and with
    ``k`` random patches (mean, and sd over draws pooled across questions)."""
    from mllm_lens.tracing.knockout import knockout_test

    top, random_means, draws = [], [], []
    for record in records:
        test = knockout_test(model, record.probe(with_answer=False), k=k, repeats=repeats)
        top.append(test.topk_drop)
        random_means.append(float(test.random_drops.mean()))
        draws.append(test.random_drops)
    return {
        "k": k,
        "topk_knockout_drop": float(np.mean(top)),
        "random_knockout_drop": float(np.mean(random_means)),
        "random_knockout_sd": float(np.concatenate(draws).std()),
        "topk_beats_random_share": float(np.mean(np.array(top) > np.array(random_means))),
        "knockout_n": len(records),
    }


#: k of the knock-out curve beside the k = 8 headline: the demo model reads the flag's overall colours
#: from most of its 64 patches, so whether the ranking finds the patches that matter shows at larger k.
KNOCKOUT_CURVE = (16, 32, 48)


def knockout_curve(model: LensModel, records: Sequence[VQARecord], ks: Sequence[int] = KNOCKOUT_CURVE) -> dict:
    """:func:`knockout_figures` for each k of ``ks``: ``{k: {top, random, sd, share}}``."""
    curve = {}
    for k in ks:
        figures = knockout_figures(model, records, k=k)
        curve[str(k)] = {
            "top": figures["topk_knockout_drop"],
            "random": figures["random_knockout_drop"],
            "sd": figures["random_knockout_sd"],
            "share": figures["topk_beats_random_share"],
        }
    return curve


def split_countries(seed: int = 0, tune: int = 12) -> tuple[list[str], list[str]]:
    """Training countries split into a tuning set (defaults are tuned on its requests only) and
    a report set (the model card's edit figures come from its requests only)."""
    countries = world.training_countries()
    random.Random(seed).shuffle(countries)
    return countries[:tune], countries[tune:]


def flipped_requests(countries: Sequence[str], seed: int = 0):
    """Capital questions on each country's flag, each given the next country's capital."""
    from mllm_lens.editing.requests import world_request

    n = len(countries)
    return [
        world_request(c, "capital", world.fact(countries[(i + 1) % n], "capital"), seed=seed + i)
        for i, c in enumerate(countries)
    ]


def edit_figures(
    model: LensModel, requests, *, singles: int = 10, batches: Sequence[int] = (10, 50), **options
) -> dict:
    """MultEdit with the library's defaults: single edits (mean over ``singles`` requests) and
    batches, each with efficacy, generalisation and specificity drop (accuracy points)."""
    from mllm_lens.editing.metrics import evaluate_edit, specificity_set

    biggest = requests[: max([singles, *batches])]
    specificity = specificity_set([r.subject for r in biggest])
    before = float(specificity.run(model)[1].mean())
    common = dict(specificity=specificity, specificity_before=before, trace=False, warn=False, **options)
    rows = [evaluate_edit(model, request, **common) for request in requests[:singles]]
    out: dict[str, float | int | None] = {
        "edit_efficacy": float(np.mean([r.efficacy for r in rows])),
        "edit_generalisation": float(np.mean([r.generalisation for r in rows])),
        "edit_specificity_drop": float(np.mean([r.specificity_drop for r in rows])),
        "n_singles": len(rows),
    }
    for size in batches:
        report = evaluate_edit(model, requests[:size], **common)
        out[f"batch{size}_efficacy"] = report.efficacy
        out[f"batch{size}_generalisation"] = report.generalisation
        out[f"batch{size}_specificity_drop"] = report.specificity_drop
    out["n_specificity"] = len(specificity)
    return out


#: A non-reader text position giving the image more of its attention than this counts as an opened gate.
GATE_OPEN = 0.01


def gate_leak(model: LensModel, records: Sequence[VQARecord]) -> dict:
    """The largest share of attention (any layer, head) a text position other than a reader gives the
    image, in the *corrupted* run of each default corruption (noise on the visual constraint; image
    noise), and how many questions exceed :data:`GATE_OPEN`. On a gated model the clean run gives 0;
    noise opens the gate when it pushes a marker below zero, or, with a weak gate (``--gate-strength``),
    when it shrinks the image markers enough (:mod:`mllm_lens.demo.route_gate`). The measure means
    something only for a gated model: an ungated one (the demo model before session 14) reads the image
    everywhere, so its figures are large whatever the noise."""
    hf = model.hf_model
    readers = torch.tensor(reader_ids(model.tokenizer))
    attention = hf.config._attn_implementation
    hf.set_attn_implementation("eager")  # the attention weights
    out: dict = {"gate_leak_n": len(records)}
    try:
        corruptions = (("phrase_noise", lambda r: noise(r.main_entity)), ("image_noise", lambda r: image_noise()))
        for name, corrupt in corruptions:
            worst = []
            for record in records:
                encoded = record.probe().encode(model)
                corrupted = corrupt(record).apply(model, encoded, model.decoder_inputs(encoded.model_inputs))
                start, end = encoded.image_span
                ids = encoded.model_inputs["input_ids"][0]
                text = torch.arange(end, corrupted.shape[1], device=corrupted.device)
                others = text[~torch.isin(ids[text].cpu(), readers)]
                with torch.no_grad():
                    layers = hf.model.language_model(inputs_embeds=corrupted, output_attentions=True).attentions
                worst.append(max(a[0][:, others, start:end].sum(-1).max().item() for a in layers))
            out[f"gate_leak_{name}"] = max(worst)
            out[f"gate_opened_{name}"] = sum(w > GATE_OPEN for w in worst)
    finally:
        hf.set_attn_implementation(attention)
    return out
