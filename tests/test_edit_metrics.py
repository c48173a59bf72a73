"""Edit metrics: the report, evaluation on the planted model, and targets on the demo model."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

import mllm_lens as ml
from mllm_lens.editing import EditReport, EditRequest, ProbeSet, edit, evaluate_edit, world_request

PLANTED = dict(lr=5.0, steps=40, weight_decay=0.0, stop_prob=0.9)


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for _, p in sorted(model.hf_model.named_parameters()):
        digest.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_report_table_and_dict():
    report = EditReport(
        method="multedit",
        site="mlp",
        layers=[1],
        n_edits=2,
        efficacy=0.95,
        efficacy_exact=1.0,
        efficacy_before=0.01,
        paraphrase=0.8,
        paraphrase_exact=1.0,
        rendering=0.6,
        rendering_exact=0.5,
        specificity_before=0.9,
        specificity_after=0.885,
        n_specificity=200,
    )
    assert report.generalisation == pytest.approx(0.7)
    assert report.generalisation_exact == pytest.approx(0.75)
    assert report.specificity_drop == pytest.approx(1.5)
    data = report.as_dict()
    json.dumps(data)
    assert data["specificity_drop"] == pytest.approx(1.5) and data["generalisation"] == pytest.approx(0.7)
    table = report.table()
    assert "efficacy" in table and "drop 1.50 pts" in table and "layers [1]" in table


def test_evaluate_edit_on_the_planted_model(planted):
    model = planted.model
    entity = "e5"
    target = next(a for a in sorted(set(planted.facts.values())) if a != planted.facts[entity])
    probe = planted.probe(entity)
    probe.answer = None
    others = ProbeSet((planted.probe(e), a) for e, a in planted.facts.items() if e != entity)
    before = fingerprint(model)
    report = evaluate_edit(model, EditRequest(probe, target), layers=2, specificity=others, **PLANTED)
    assert fingerprint(model) == before  # requests in, model restored
    assert report.efficacy > 0.8 and report.efficacy_exact == 1.0 and report.efficacy_before < 0.01
    assert report.generalisation is None  # no demo-world metadata: nothing to paraphrase
    assert report.specificity_before == 1.0 and report.n_specificity == len(planted.facts) - 1
    assert report.trace["before"]["target"] == planted.facts[entity]
    assert report.trace["after"]["target"] == target
    assert report.trace["after"]["key_layer"] == 2
    # an applied Edit is measured as it stands and left applied
    with edit(model, probe, target, layer=2, **PLANTED) as handle:
        again = evaluate_edit(model, handle, specificity=others, trace=False)
        assert handle.applied and again.efficacy == pytest.approx(report.efficacy)
    assert fingerprint(model) == before


LATE_LAYER = 3  # by the last layer the answer position no longer reads the visual constraint


@pytest.fixture(scope="module")
def demo():
    return ml.load("demo")


def test_single_multedits_on_the_demo_model_meet_the_targets(demo):
    from mllm_lens.data import world
    from mllm_lens.editing.metrics import specificity_set

    flips = {"France": "Rome", "Japan": "Cairo", "Peru": "Oslo", "Ghana": "Lima"}
    requests = [world_request(c, "capital", new, seed=i) for i, (c, new) in enumerate(flips.items())]
    specificity = specificity_set(list(flips), n=280)
    before_state = fingerprint(demo)
    base = float(specificity.run(demo)[1].mean())
    assert base > 0.8
    # the library's defaults: the paper's key, the layer the trace finds (0 on the demo model)
    reports = [evaluate_edit(demo, r, specificity=specificity, specificity_before=base, trace=False) for r in requests]
    assert fingerprint(demo) == before_state
    assert min(r.efficacy_exact for r in reports) == 1.0
    assert sum(r.efficacy for r in reports) / len(reports) >= 0.9
    assert sum(r.generalisation for r in reports) / len(reports) >= 0.7
    assert sum(r.specificity_drop for r in reports) / len(reports) <= 2.0  # the single-edit target (a mean)
    assert max(r.specificity_drop for r in reports) <= 3.0
    assert all(r.as_dict()["layers"] == [0] for r in reports)  # where the trace finds the fact
    assert world.fact("France", "capital") == "Paris"


def test_a_paper_key_edit_where_the_constraint_no_longer_counts_warns(demo):
    # In the last layer the answer position has long read the constraint: an edit there does nothing.
    request = world_request("France", "capital", "Rome")
    with pytest.warns(ml.editing.EditIneffectiveWarning, match="key_token='last'"):
        handle = ml.editing.edit_many(demo, [request], layers=LATE_LAYER)
    handle.undo()


def test_a_weak_last_token_edit_warns_without_suggesting_the_last_token(demo):
    # A held-out country's capital: greedy answer flips, but its untrained output embedding keeps p low.
    request = world_request("Lithuania", "capital", "Vilnius")
    with pytest.warns(ml.editing.EditIneffectiveWarning, match="output embedding") as caught:
        handle = ml.editing.edit_many(demo, [request], layers=LATE_LAYER, key_token="last")
    handle.undo()
    assert all("key_token='last'" not in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        handle = ml.editing.edit_many(demo, [request], layers=LATE_LAYER, key_token="last", warn=False)
    handle.undo()
    assert not quiet and "output embedding" in handle.info["notes"][0]  # kept as a note, not warned
