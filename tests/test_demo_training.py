"""The demo model's training recipe: named questions and the route mask."""

from __future__ import annotations

import random

import pytest
import torch

from mllm_lens.data import world
from mllm_lens.demo.build import build_demo_model
from mllm_lens.demo.train import make_batch, question_forms, route_mask


def test_named_questions_put_the_country_where_the_visual_phrase_was():
    rng = random.Random(0)
    for template in world.TEMPLATES[1:]:
        for paraphrase, text in enumerate(template.paraphrases):
            question, answer, _ = world.named_question(template, paraphrase, "Peru", rng)
            assert "Peru" in question and world.visual_phrase(text) not in question
            if template.relation in world.FACT_NAMES:
                assert answer == world.fact("Peru", template.relation)
    with pytest.raises(ValueError, match="no named form"):
        world.named_question(world.template("country"), 0, "Peru", rng)


def test_route_mask_lets_only_the_entity_phrase_see_the_image():
    mask = route_mask(length=12, image=(1, 5), entity=(8, 10), batch=2)
    assert mask.shape == (2, 1, 12, 12)
    sees = mask[0, 0] == 0
    assert not sees.triu(1).any()  # causal
    for query in range(12):
        image_visible = bool(sees[query, 1:5].any())
        assert image_visible == (1 <= query < 5 or query in (8, 9)), query
        assert sees[query, : min(query, 1)].all() and sees[query, 5 : query + 1].all()  # text stays visible


def test_batches_locate_the_entity_phrase():
    _, processor = build_demo_model(0)
    rng = random.Random(1)
    form = next(f for f in question_forms() if f[0].name == "capital" and f[1] == 2)
    tokenizer = processor.tokenizer
    ids, answers, (start, end), mentioned = make_batch(tokenizer, 64, ["Peru", "Chile"], form, rng, True)
    tokens = tokenizer.convert_ids_to_tokens(ids[0, start:end].tolist())
    assert tokens == ["the", "country", "of", "this", "flag"] and answers == ["Lima", "Santiago"] and mentioned is None
    assert torch.all(ids[0, 1:65] == tokenizer.convert_tokens_to_ids("<image>"))
    ids, _, (start, end), _ = make_batch(tokenizer, 64, ["Peru"], form, rng, True, named=True)
    assert tokenizer.convert_ids_to_tokens(ids[0, start:end].tolist()) == ["Peru"]
    # text only, the country mentioned first: "Peru is shown. Name the capital city of the country of this flag."
    ids, _, (start, end), (m0, m1) = make_batch(tokenizer, 0, ["Peru"], form, rng, True, mention=True)
    assert tokenizer.convert_ids_to_tokens(ids[0, m0:m1].tolist()) == ["Peru"] and m1 <= start
    assert tokenizer.convert_ids_to_tokens(ids[0, start:end].tolist())[-1] == "flag"
    assert tokenizer.convert_tokens_to_ids("<image>") not in ids[0].tolist()
