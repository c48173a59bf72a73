"""The shipped demo model: loads offline, answers held-out renderings, traces sensibly."""

from __future__ import annotations

import json
import random
import warnings

import pytest

import mllm_lens as ml
from mllm_lens.data import world
from mllm_lens.demo import MODEL_DIR
from mllm_lens.demo.evaluate import main as evaluate_main
from mllm_lens.demo.train import train


@pytest.fixture(scope="module")
def demo() -> ml.LensModel:
    return ml.load("demo")


def test_shipped_model_accuracy_and_size(capsys):
    evaluate_main(["--renderings", "1", "--accuracy-only"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["accuracy"] >= 0.95
    assert min(report["accuracy_by_template"].values()) >= 0.9
    assert report["n"] == len(world.training_countries()) * sum(len(t.paraphrases) for t in world.TEMPLATES)
    assert report["size_mb"] <= 25


def test_demo_loads_through_from_pretrained(demo):
    assert demo.name == str(MODEL_DIR)
    assert demo.adapter.architecture == "llava" and demo.adapter.paper_template


def test_trace_on_the_demo_model_finds_the_fact_at_the_visual_constraint(demo):
    """The paper's defaults (noise on the visual constraint, MLP outputs, window 1) find the fact
    where the shipped model keeps it: layer 0's MLP at the phrase's last token (issue 11)."""
    record = world.make_record("Japan", world.template("capital"), 0, random.Random(1))
    result = ml.trace(demo, record.probe(), ml.noise(), site="mlp", progress=False)
    assert result.target_token == "Tokyo"
    assert result.clean_prob > 0.5 and result.corrupted_prob < 0.3 * result.clean_prob
    layer, position = result.peak()
    start, end = result.constraint_spans["this country"]
    assert (layer, position) == (0, end - 1)
    assert result.scores[0, end - 1] > 0.5 * result.clean_prob


def test_image_noise_takes_most_answers_away(demo):
    from mllm_lens.demo import mechanism

    clean, corrupted = [], []
    for record in mechanism.mechanism_records(21):
        session = ml.TraceSession(demo, record.probe(), ml.image_noise(), sites=("mlp",), warn=False)
        clean.append(session.clean_prob)
        corrupted.append(session.corrupted_prob)
    assert sum(corrupted) < 0.7 * sum(clean)
    assert sum(c < 0.1 * k for c, k in zip(corrupted, clean, strict=True)) >= 5


def test_held_out_countries_are_unknown_to_the_demo_model(demo):
    misses = 0
    for country in world.HELD_OUT:
        record = world.make_record(country, world.template("capital"), 0, random.Random(2))
        encoded = record.probe().encode(demo)
        top = int(demo.decoder_logits(demo.decoder_inputs(encoded.model_inputs))[0].argmax())
        misses += top != encoded.target_id
    assert misses >= len(world.HELD_OUT) - 1


def test_short_training_run_lowers_the_loss():
    _, _, curve = train(steps=40, batch=16, renderings=2, seed=0, lr=2e-3, out=None, log_every=5)
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.5


def test_mechanism_measures_on_the_demo_model(demo):
    from mllm_lens.demo import mechanism

    records = mechanism.mechanism_records(7)
    assert sorted(r.meta["template"] for r in records) == sorted(t.name for t in world.TEMPLATES)
    noise = mechanism.constraint_noise_ratio(demo, records)
    assert noise["noise_n"] == 7 and 0 < noise["noised_p"] and noise["clean_p"] > 0.5
    switch = mechanism.replace_switch_rate(demo, records)
    assert switch["switch_n"] == 6 and 0 <= switch["replace_switch_rate"] <= 1  # the country template has no named form
    other, expected = mechanism.switched_question(records[1], random.Random(0))
    relation = world.template(records[1].meta["template"]).relation
    assert expected == world.fact(other, relation) != records[1].answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a role absent from every question is None, not a NaN mean
        roles = mechanism.role_profile(demo, records[:2])
    assert set(roles["profile"]) == set(mechanism.ROLES) and len(roles["profile"]["last"]) == demo.num_layers
    assert not any(r.textual_constraints for r in records[:2]) and roles["profile"]["textual"] is None
    json.dumps(roles, allow_nan=False)
    curve = mechanism.knockout_curve(demo, records, ks=(8, 48))
    assert set(curve) == {"8", "48"} and all(set(row) == {"top", "random", "sd", "share"} for row in curve.values())
    assert curve["48"]["top"] > curve["48"]["random"] + curve["48"]["sd"]  # the ranking finds what the phrase reads
    tune, report = mechanism.split_countries()
    assert not set(tune) & set(report) and len(tune) + len(report) == len(world.training_countries())


def test_the_command_lines_defaults_are_the_shipped_models_recipe(monkeypatch, capsys):
    """``python -m mllm_lens.demo.train`` rebuilds the shipped model: every option it passes equals
    the recipe recorded next to the shipped weights."""
    from mllm_lens.demo import train as training

    calls = []
    monkeypatch.setattr(
        training, "train", lambda *a, **k: calls.append((a, k)) or (None, None, [{"loss": 0, "seconds": 0}])
    )
    training.main([])
    ((args, options),) = calls
    given = {**dict(zip(["steps", "batch", "renderings", "seed", "lr"], args, strict=False)), **options}
    recipe = json.loads((MODEL_DIR / "training_curve.json").read_text())
    assert recipe["route_gate"] and recipe["cls_token"]
    assert {k: v for k, v in given.items() if recipe[k] != v} == {}
    training.main(["--no-route-gate", "--steps", "5"])
    assert calls[-1][1]["route_gate"] is False and calls[-1][0][0] == 5
