"""The demo world: deterministic, real facts, annotated constraints the probe code finds."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mllm_lens.data import world
from mllm_lens.data.flags import FLAGS, draw_flag
from mllm_lens.demo.build import build_demo_model
from mllm_lens.models.lens_model import LensModel


@pytest.fixture(scope="module")
def demo_shaped_model() -> LensModel:
    return LensModel.wrap(*build_demo_model())


def test_generator_is_deterministic():
    a = world.generate(world.training_countries()[:5], seed=7)
    b = world.generate(world.training_countries()[:5], seed=7)
    c = world.generate(world.training_countries()[:5], seed=8)
    assert [(r.question, r.answer) for r in a] == [(r.question, r.answer) for r in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, c, strict=True))


def test_world_size_and_splits():
    assert len(world.FACTS) >= 50 and set(world.FACTS) == set(FLAGS)
    assert set(world.HELD_OUT) <= set(world.FACTS)
    assert not set(world.HELD_OUT) & set(world.training_countries())
    assert {facts[1] for facts in world.FACTS.values()} == set(world.CONTINENTS)


def test_flags_are_pairwise_distinct():
    names = sorted(FLAGS)
    pixels = {n: np.asarray(draw_flag(n, 48, 32), dtype=np.float32) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(pixels[a] - pixels[b]).mean() > 3.0, (a, b)


def test_every_constraint_is_found_and_every_answer_is_one_known_token(demo_shaped_model):
    tokenizer = demo_shaped_model.tokenizer
    records = world.generate(seed=3, render=False)
    for record in records[:: max(1, len(records) // 300)]:
        encoded = record.probe().encode(demo_shaped_model)
        assert set(encoded.spans) == {record.main_entity, *record.textual_constraints}
        start, end = encoded.spans[record.main_entity]
        assert " ".join(encoded.tokens[start:end]) == record.main_entity
        ids = tokenizer(record.answer, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id
        assert encoded.target_id == ids[0]


def test_records_follow_the_vqa_constraints_fields():
    record = world.make_record("France", world.template("in_continent"), 0, random.Random(0))
    assert record.subject == "France" and record.main_entity == "this country"
    assert record.question.startswith("Is this country in ")
    assert record.answer == ("yes" if record.textual_constraints == ["Europe"] else "no")
    assert record.image.size == (64, 64)
    kinds = [c.kind for c in record.constraints]
    assert kinds == ["visual", "textual"]


def test_paraphrases_cover_every_template():
    for template in world.TEMPLATES:
        assert len(template.paraphrases) >= 3
        assert len({world.visual_phrase(p) for p in template.paraphrases}) >= 2
