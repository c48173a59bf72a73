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


def test_image_attention_mass_counts_only_the_other_text_positions():
    from mllm_lens.demo.train import image_attention_mass

    length, image, entity = 10, (1, 5), (6, 8)
    attention = torch.zeros(1, 2, length, length)
    attention[:, :, :, 0] = 1.0  # everything on BOS ...
    attention[:, :, 6, 0], attention[:, :, 6, 2] = 0.0, 1.0  # ... but the phrase reads the image
    attention[:, 1, 9, 0], attention[:, 1, 9, 3] = 0.5, 0.5  # and one head of the last position half
    queries = length - image[1] - (entity[1] - entity[0])  # text positions after the image, phrase excluded
    expected = 0.5 / (2 * queries)  # mean over heads and queries
    assert image_attention_mass([attention], image, entity, named=False).item() == pytest.approx(expected)
    # a named country is text: its own reading of the image counts too
    named = image_attention_mass([attention], image, entity, named=True).item()
    assert named == pytest.approx((0.5 + 2 * 1.0) / (2 * (queries + 2)))
    # the max charges the worst head and position in full: the last position's half read
    assert image_attention_mass([attention], image, entity, False, reduce="max").item() == pytest.approx(0.5)
    assert image_attention_mass([attention, attention * 0], image, entity, False, "max").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="reduce"):
        image_attention_mass([attention], image, entity, False, reduce="sum")


def tiny_routed_training(**options):
    """A few steps of the demo recipe with the route penalty and the phrase's target, on 4 questions."""
    from mllm_lens.demo.train import train

    base = dict(steps=6, batch=4, renderings=1, seed=0, lr=1e-3, out=None, log_every=3, identity_steps=2)
    return train(**(base | dict(route_penalty=3.0, name_at_phrase=1.0) | options))


def test_route_penalty_training_runs_unmasked_and_records_its_terms():
    model, _, curve = tiny_routed_training(phrase_target="fact", noised_share=0.5)
    assert model.config._attn_implementation == "sdpa"  # eager only while training
    assert all("loss" in point for point in curve)
    assert any("image_mass" in point or "noised_mass" in point for point in curve)


def test_phrase_targets_put_the_compared_attribute_at_the_phrase_of_yes_no_questions():
    from mllm_lens.demo.train import phrase_targets

    forms = {f[0].name: f for f in question_forms()}
    countries, answers = ["Peru", "Japan"], ["yes", "no"]
    assert phrase_targets(forms["in_continent"], countries, answers, "attribute") == ["Americas", "Asia"]
    assert phrase_targets(forms["uses_currency"], countries, answers, "attribute") == ["sol", "yen"]
    assert phrase_targets(forms["in_continent"], countries, answers, "fact") == countries
    assert phrase_targets(forms["capital"], countries, ["Lima", "Tokyo"], "attribute") == ["Lima", "Tokyo"]
    assert phrase_targets(forms["capital"], countries, ["Lima", "Tokyo"], "name") == countries


def test_answer_options_cover_each_relations_answers():
    from mllm_lens.demo.train import answer_options

    _, processor = build_demo_model(0)
    tokenizer = processor.tokenizer
    countries = world.training_countries()
    words = tokenizer.convert_ids_to_tokens(answer_options(tokenizer, "continent", countries).tolist())
    assert sorted(words) == sorted(world.CONTINENTS)
    yes_no = tokenizer.convert_ids_to_tokens(answer_options(tokenizer, "uses_currency", countries).tolist())
    assert yes_no == ["yes", "no"]
    capitals = answer_options(tokenizer, "capital", countries)
    assert len(capitals) == len(countries) and tokenizer.unk_token_id not in capitals.tolist()


def test_noised_answer_and_early_phrase_layer_are_trained_and_recorded(tmp_path):
    import json

    tiny_routed_training(
        steps=8,
        out=tmp_path,
        log_every=2,
        phrase_target="attribute",
        phrase_layer=1,
        noised_share=0.9,
        noised_answer=True,
        reader="last",
    )
    saved = json.loads((tmp_path / "training_curve.json").read_text())
    assert saved["phrase_layer"] == 1 and saved["noised_answer"] is True and saved["reader"] == "last"
    assert any("noised_answer" in point for point in saved["curve"])
    assert any("name_loss" in point for point in saved["curve"])


def test_vision_pretraining_learns_to_tell_flags_apart():
    from mllm_lens.demo.train import pretrain_vision, render_pool

    torch.manual_seed(0)
    model, processor = build_demo_model(0)
    pool = render_pool(processor, ["Japan", "Peru", "Germany", "Italy"], 2, seed=0)
    before = [p.detach().clone() for p in model.model.language_model.parameters()]
    losses = pretrain_vision(model, pool, steps=40, batch=16, lr=1e-3, rng=random.Random(0))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    after = list(model.model.language_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the decoder is left alone


def test_image_readers_is_the_phrase_or_its_last_token():
    from mllm_lens.demo.train import image_readers

    assert image_readers((8, 10), "phrase") == (8, 10)
    assert image_readers((8, 10), "last") == (9, 10)
    with pytest.raises(ValueError, match="reader"):
        image_readers((8, 10), "first")


def test_decoder_lr_factor_freezes_the_decoder_for_the_alignment_steps_only():
    from mllm_lens.demo.train import decoder_lr_factor

    assert decoder_lr_factor(-5, frozen_steps=3, scale=0.3) == 1.0  # text stage: the decoder learns
    assert [decoder_lr_factor(s, 3, 0.3) for s in range(5)] == [0.0, 0.0, 0.0, 0.3, 0.3]


def test_frozen_decoder_steps_leave_the_decoder_unchanged_and_train_the_tower():
    from mllm_lens.demo.build import build_demo_model as fresh
    from mllm_lens.demo.train import decoder_parameters

    before, _ = fresh(0)
    model, _, _ = tiny_routed_training(steps=3, identity_steps=1, frozen_decoder_steps=3, decoder_lr_scale=0.5)
    for old, new in zip(decoder_parameters(before), decoder_parameters(model), strict=True):
        assert torch.equal(old, new)
    tower_old = before.model.vision_tower.state_dict()
    assert any(not torch.equal(tower_old[k], v) for k, v in model.model.vision_tower.state_dict().items())


def test_text_route_penalty_trains_mention_questions_unmasked(tmp_path):
    import json

    tiny_routed_training(steps=2, text_steps=6, out=tmp_path, log_every=1, text_route="penalty", reader="last")
    saved = json.loads((tmp_path / "training_curve.json").read_text())
    assert saved["text_route"] == "penalty"
    text_points = [p for p in saved["curve"] if p["step"] <= 6]
    assert any("image_mass" in p for p in text_points)  # the mention's name, read by the phrase alone
    with pytest.raises(ValueError, match="text_route"):
        tiny_routed_training(steps=1, text_route="hard")


def test_unmasked_penalty_charges_the_attention_the_route_mask_hides():
    """Under the route mask the penalised positions cannot see the image (mass 0); with
    ``unmasked_penalty`` the penalty comes from an unmasked forward, where the fresh model's
    answer position does read it."""
    common = dict(steps=3, identity_steps=1, log_every=1, route_mask_share=1.0, reader="phrase")
    _, _, masked_only = tiny_routed_training(**common)
    assert [p["image_mass"] for p in masked_only] == [0.0, 0.0, 0.0]
    _, _, shadowed = tiny_routed_training(**common, unmasked_penalty=True, shadow_rows=2)
    assert all(p["image_mass"] > 0.01 for p in shadowed)


def test_unmasked_penalty_keeps_the_cls_name_loss_on_the_whole_batch():
    """The shadow forward of ``unmasked_penalty`` runs the projector on fewer rows; the CLS name
    loss must still use the main forward's features (it crashed on the shadow's)."""
    _, _, curve = tiny_routed_training(
        steps=3,
        identity_steps=1,
        log_every=1,
        route_mask_share=1.0,
        unmasked_penalty=True,
        shadow_rows=2,
        cls_token=True,
        cls_name_loss=1.0,
        cls_name_temperature=0.1,
    )
    assert all(point["cls_name"] > 0 and point["image_mass"] > 0 for point in curve)


def test_cls_token_is_the_first_image_token_and_the_name_loss_pulls_it_to_the_name():
    """With ``cls_token`` the processor and the model agree on 65 image tokens (CLS first); the
    CLS-to-name distance is 0 for the name's own embedding (at any scale), moves only the image
    side (the name's embedding is the fixed target) and is recorded in the training curve."""
    from mllm_lens.demo.build import image_token_count
    from mllm_lens.demo.train import cls_name_distance

    model, processor = build_demo_model(0, cls_token=True)
    assert image_token_count(model.config) == 65 and image_token_count(build_demo_model(0)[0].config) == 64
    image = world.render_flag("Peru", random.Random(0))
    encoded = processor(images=image, text="USER: <image>\nWhat is this? ASSISTANT:", return_tensors="pt")
    assert int((encoded["input_ids"] == model.config.image_token_id).sum()) == 65
    model(**encoded)  # the model takes the processor's 65 tokens
    embeddings = model.get_input_embeddings().weight
    targets = torch.tensor([5, 9])
    scaled_names = embeddings[targets][:, None] * 3.0
    assert cls_name_distance(scaled_names, embeddings, targets).item() == pytest.approx(0, abs=1e-6)
    features = torch.randn(2, 65, embeddings.shape[1], requires_grad=True)
    distance = cls_name_distance(features, embeddings, targets)
    assert 0.5 < distance.item() < 1.5  # random directions: cosine near 0
    distance.backward()
    assert embeddings.grad is None and features.grad[:, 1:].eq(0).all() and features.grad[:, 0].ne(0).any()
    with pytest.raises(ValueError, match="cls-token"):
        tiny_routed_training(steps=1, cls_name_loss=1.0)
    _, _, curve = tiny_routed_training(steps=2, log_every=1, cls_token=True, cls_name_loss=1.0)
    assert all(0 < point["cls_name"] < 2 for point in curve)


def test_cls_name_contrast_picks_the_own_name_and_pushes_away_from_the_others():
    """The contrastive CLS loss is small when the CLS feature is its own name's embedding, large
    when it is another candidate's (unlike the cosine pull, it sees the other names), and moves
    only the image side."""
    from mllm_lens.demo.train import cls_name_contrast

    embeddings = torch.randn(20, 16)
    candidates = torch.tensor([3, 7, 11, 15])
    own = embeddings[candidates][:, None].repeat(1, 5, 1) * 2.0  # CLS = own name, any scale
    right = cls_name_contrast(own, embeddings, candidates, torch.arange(4), 0.05)
    wrong = cls_name_contrast(own, embeddings, candidates, torch.tensor([1, 2, 3, 0]), 0.05)
    assert right.item() < 0.1 < 5.0 < wrong.item()
    features = torch.randn(4, 5, 16, requires_grad=True)
    cls_name_contrast(features, embeddings.requires_grad_(), candidates, torch.arange(4), 0.1).backward()
    assert embeddings.grad is None and features.grad[:, 1:].eq(0).all() and features.grad[:, 0].ne(0).any()
    _, _, curve = tiny_routed_training(
        steps=2, log_every=1, cls_token=True, cls_name_loss=1.0, cls_name_temperature=0.1
    )
    assert all(point["cls_name"] > 0 for point in curve)


def test_words_after_the_phrase_are_those_between_it_and_the_answer_position():
    """``--after-phrase-target`` trains exactly the words between the visual phrase and the answer
    position (the ":" of "ASSISTANT:"): the question's rest and the prompt's instruction."""
    from mllm_lens.demo.train import make_batch, words_after_phrase

    _, processor = build_demo_model(0)
    forms = {f[0].name: f for f in question_forms() if f[1] == 0}
    words = {}
    for name in ("capital", "continent", "in_continent"):
        ids, _, entity, _ = make_batch(processor.tokenizer, 64, ["Peru"], forms[name], random.Random(0), True)
        inputs = ids[0, :-1].tolist()  # teacher forcing: the inputs end with the answer position and the answer
        after = words_after_phrase(entity, len(inputs))
        words[name] = processor.tokenizer.convert_ids_to_tokens([inputs[i] for i in after])
        assert processor.tokenizer.convert_ids_to_tokens(inputs[-2]) == ":"
    instruction = ["?", "Answer", "in", "a", "few", "words", ".", "ASSISTANT"]
    assert words["capital"] == instruction and words["continent"] == ["in", *instruction]
    assert words["in_continent"][0] == "in" and words["in_continent"][2:] == instruction
    _, _, curve = tiny_routed_training(steps=12, log_every=1, after_phrase_target=1.0, phrase_target="attribute")
    assert all(point.get("after_phrase", 0) > 0 for point in curve if "name_loss" in point)


def test_key_spread_penalty_charges_collinear_keys_of_different_countries_only():
    """0 for orthogonal keys, 1 for collinear ones (after centring), and pairs about one country are free;
    a training run with ``key_spread`` records the term."""
    from mllm_lens.demo.train import key_spread_penalty

    axes = torch.eye(4) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    keys = torch.cat([axes, -axes])  # centred; key i and key i + 4 are collinear, every other pair orthogonal
    assert torch.isclose(key_spread_penalty(keys, torch.arange(8)), torch.tensor(8 / 56))
    assert key_spread_penalty(keys, torch.arange(4).repeat(2)) == 0  # collinear pairs about one country
    line = torch.tensor([[1.0, 2.0, 0.0]]) * torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    assert torch.isclose(key_spread_penalty(line, torch.arange(4)), torch.tensor(1.0))
    random_keys = torch.randn(64, 384, generator=torch.Generator().manual_seed(0))
    assert key_spread_penalty(random_keys, torch.arange(64)) < 0.01
    _, _, curve = tiny_routed_training(steps=2, log_every=1, key_spread=1.0)
    assert all(0 < point["key_spread"] <= 1 for point in curve)
