"""Train the demo model from scratch: ``python -m mllm_lens.demo.train``.

Deterministic for a seed. Flags are pre-rendered (``--renderings`` per country) and
preprocessed once by the model's own image processor; each step draws one question form
(template x paraphrase, so sequences in a batch have one length) and a batch of countries,
and minimises the cross-entropy of the answer token and the EOS after it.

The routing options aim at a model that retrieves facts *at the visual-constraint tokens*, as
the paper found for LLaVA-1.5 (which inherits that route from its text-only decoder):

1. **Text first** (``--text-steps``, no image, cheap): questions naming a country ("What is
   the capital of Peru?") and questions referring back to a mention ("Peru is shown. What is
   the capital of this country?") in which only "this country" may attend to the name. The
   decoder learns the facts of named countries and to resolve "this country" at its own tokens.
2. **Then the flags**: ``--identity-steps`` of "which country is this flag?" (LLaVA's
   feature alignment: without it the decoder settles on text priors), then every question
   form. In image batches the image is cut out of the attention of every text position but
   the visual phrase (the *route mask*, training only), so the image has to take the
   mention's place; the last ``--unmasked-tail`` steps run unmasked, as the model is used.
   A share of batches name a country while showing a random flag (the named entity wins),
   and a share repeat the mention questions.

3. **Route penalty** (``--route-penalty``, session 4): instead of the mask, the model runs
   unmasked and pays for the attention that text positions other than the visual phrase give the
   image (:func:`image_attention_mass`), so nothing is left untrained for inference;
   ``--name-at-phrase`` makes the phrase's last token predict the country's name (or, with
   ``--phrase-target fact``, the answer of an open question); ``--noised-share`` adds batches
   with the trace's noise on the phrase, trained only to keep the image out of every text position.

4. **Session 5** options: ``--phrase-target attribute`` (yes/no questions put the compared
   attribute at the phrase), ``--phrase-layer`` (the phrase's target read by the logit lens after
   an early layer), ``--noised-answer`` (noised batches learn a uniform answer), ``--vision-steps``
   (the vision tower first trained alone as a flag classifier), ``--reader last`` (only the
   phrase's last token, the paper's edit key, may read the image).

5. **Session 6** options: ``--text-route penalty`` (text-only mention questions run unmasked under
   the route penalty), ``--frozen-decoder-steps`` / ``--decoder-lr-scale`` (LLaVA's alignment: the
   first flag steps train only the vision tower and projector), ``--penalty-reduce max`` (the
   penalty charges the worst head and position of each layer).

6. **Session 7**: ``--unmasked-penalty`` (with ``--route-mask-share``): the answer loss of a masked
   batch comes from the masked forward, and the route penalty from an unmasked forward of its first
   ``--shadow-rows`` questions, so the attention the mask hides is trained to stay off the image
   while no answer gradient ever rewards a direct read.

7. **Session 8**: ``--cls-token`` keeps the vision tower's CLS token as the first image token
   (LLaVA's ``vision_feature_select_strategy="full"``): one compact token the phrase can read as it
   reads a mentioned name, where a flag spread over 64 patches needed a read in every layer
   (recipes T and U2); ``--cls-name-loss`` pulls the projected CLS feature towards the input
   embedding of the country's name (cosine), so the image takes the mention's place in the
   decoder's text-trained route from the first aligned step.

8. **Session 12**: ``--route-gate`` (:mod:`mllm_lens.demo.route_gate`) writes the route into the
   weights: fixed markers and one reserved query/key pair per head let only the visual phrase's
   last word read the image, in the first ``--reader-layers`` layers; every other text position's
   image read is blocked in the model itself, unmasked, as it is used. ``--text-route gate`` marks
   a mentioned name as an image token in the text-first stage.

9. **Session 16**: ``--key-spread`` (in the shipped recipe since session 17, β = 10) pushes apart the layer-0 MLP
   keys (the input of ``down_proj``, the paper's edit key) at the phrase's last token of questions about
   different countries (:func:`key_spread_penalty`), so that a batch edit's keys do not span the
   other countries' keys (issue 11, batch edits).

The command line's defaults are the shipped model's recipe, :data:`SHIPPED_RECIPE` (recipe G9
of ``benchmarks/RESULTS.md`` with the gate saved at strength 10, plus the key spread at β = 10 since
session 17): the route gate, the CLS token pulled contrastively towards the name, the phrase
predicting the question's attribute after layer 0 and the words after it relaying that target, a
quarter of the batches naming a country, layer 0's keys at the phrase spread apart across countries;
``python -m mllm_lens.demo.train --threads 1`` rebuilds the shipped weights bit for bit (another
thread count changes the float summation order). :func:`train`'s own keyword defaults stay the
plain LLaVA-style recipe (identity stage, then every question form, no routing), the baseline
every routing option is measured against. ``benchmarks/RESULTS.md`` ("Demo model recipes") lists
what every recipe tried for issue 11 gave.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mllm_lens.data import world
from mllm_lens.demo.build import MODEL_DIR, build_demo_model, image_token_count, prompt_ids
from mllm_lens.demo.route_gate import (
    IMAGE_MARGIN,
    MARKERS,
    STRENGTH,
    TEXT_MARGIN,
    clear_gate_gradients,
    content_rms,
    install_route_gate,
    layer_growth,
    mark_as_image,
    reader_ids,
)
from mllm_lens.io import atomic_path

_YES_NO = ("in_continent", "uses_currency")
#: The attribute a yes/no relation compares against its textual constraint.
_COMPARED = {"in_continent": "continent", "uses_currency": "currency"}
#: The sentence that names the country before a question in the text-first stage.
MENTION = "is shown."


def render_pool(processor, countries: list[str], renderings: int, seed: int) -> torch.Tensor:
    """``[countries, renderings, 3, H, W]`` pixel values from the model's image processor."""
    rng = random.Random(seed)
    images = [world.render_flag(c, rng) for c in countries for _ in range(renderings)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return pixels.view(len(countries), renderings, *pixels.shape[1:])


def question_forms() -> list[tuple[world.Template, int]]:
    return [(t, p) for t in world.TEMPLATES for p in range(len(t.paraphrases))]


def make_batch(
    tokenizer,
    n_image: int,
    countries: list[str],
    form,
    rng: random.Random,
    with_answer: bool,
    named: bool = False,
    mention: bool = False,
):
    """input ids ``[B, T]``, answers and the entity phrase's token span for one question form.

    ``named`` asks the question with the country's name in place of the visual phrase;
    ``mention`` names the country in a sentence before the question ("Peru is shown. What is
    the capital of this country?"); then the name's span is returned too (else None).
    """
    template, paraphrase = form
    ids, answers, spans, sources = [], [], [], []
    for country in countries:
        if named:
            question, answer, _ = world.named_question(template, paraphrase, country, rng)
            phrase = country
        else:
            record = world.make_record(country, template, paraphrase, rng, render=False)
            question, answer, phrase = record.question, record.answer or "", record.main_entity
            if mention:
                question = f"{country} {MENTION} {question}"
        answers.append(answer)
        row = prompt_ids(tokenizer, question, n_image, answer if with_answer else None)
        ids.append(row)
        spans.append(phrase_span(tokenizer, row, phrase))
        if mention:
            sources.append(phrase_span(tokenizer, row, country, last=False))
    if len(set(spans)) != 1 or len(set(sources)) > 1:
        raise ValueError(f"question form {template.name}/{paraphrase} puts its entity phrase at different positions")
    return torch.tensor(ids), answers, spans[0], (sources[0] if mention else None)


def phrase_span(tokenizer, ids: list[int], phrase: str, last: bool = True) -> tuple[int, int]:
    """``(start, end)`` of the last (or first) occurrence of ``phrase``'s tokens in ``ids``."""
    needle = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    starts = range(len(ids) - len(needle), -1, -1) if last else range(len(ids) - len(needle) + 1)
    for start in starts:
        if ids[start : start + len(needle)] == needle:
            return start, start + len(needle)
    raise ValueError(f"{phrase!r} not in the prompt")


def route_mask(length: int, image: tuple[int, int], entity: tuple[int, int], batch: int) -> torch.Tensor:
    """Additive causal mask ``[B, 1, T, T]`` in which the positions after the ``image`` span (the
    image tokens, or a country's name mentioned in the text) see it only through the entity
    phrase: every other later position's attention to it is cut.

    Used in training only (the shipped model runs unmasked): it makes the route image -> entity
    tokens -> answer the only one that works in those batches, as in LLaVA, where the answer's
    fact is retrieved at the visual-constraint tokens.
    """
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    later = torch.zeros(length, dtype=torch.bool)
    later[image[1] :] = True
    later[entity[0] : entity[1]] = False
    blocked[later.nonzero().flatten()[:, None], torch.arange(image[0], image[1])] = True
    mask = torch.zeros(length, length).masked_fill(blocked, torch.finfo(torch.float32).min)
    return mask.expand(batch, 1, length, length)


def image_readers(entity: tuple[int, int], reader: str) -> tuple[int, int]:
    """The span the route penalty lets read the image: the whole visual phrase (``"phrase"``) or
    only its last token (``"last"``, where the paper's edit key sits). With the whole phrase,
    "this" of "this country" took the flag and the answer position read it in layer 1, past the
    reach of an MLP edit at "country" (recipe E in RESULTS.md)."""
    if reader not in ("phrase", "last"):
        raise ValueError(f"reader must be 'phrase' or 'last', got {reader!r}")
    return entity if reader == "phrase" else (entity[1] - 1, entity[1])


def image_attention_mass(
    attentions, image: tuple[int, int], entity: tuple[int, int], named: bool, reduce: str = "mean"
) -> torch.Tensor:
    """Share of attention that text positions other than the entity phrase (every text position
    when the phrase is a name) give to the image tokens: with ``reduce="mean"`` its mean over
    layers, heads, positions and batch; with ``"max"`` the worst head and position of each layer
    (mean over layers and batch). The mean lets one head of the answer position read the whole
    image almost for free (recipe T in RESULTS.md: 0.998 of a layer-0 head, a mean mass of 0.004);
    the max charges exactly that read.

    The *route penalty* minimises it while the model runs unmasked, as it is used: unlike the
    route mask, it leaves no attention the model never trained (a fully masked model attends to
    the image from every position once the mask is gone; recipe C in RESULTS.md).
    """
    length = attentions[0].shape[-1]
    queries = torch.zeros(length, dtype=torch.bool)
    queries[image[1] :] = True
    if not named:
        queries[entity[0] : entity[1]] = False
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    masses = [a[:, :, queries, image[0] : image[1]].sum(-1) for a in attentions]  # [B, heads, queries]
    if reduce == "max":
        return torch.stack([m.flatten(1).max(1).values.mean() for m in masses]).mean()
    return torch.stack([m.mean() for m in masses]).mean()


def words_after_phrase(entity: tuple[int, int], length: int) -> range:
    """Input positions strictly between the visual phrase and the answer position (the ":" of
    "ASSISTANT:") in a teacher-forced row of ``length`` inputs that ends with that position and the
    answer: the rest of the question ("in ?" of "Which continent is this country in?") and the
    prompt's instruction. Trained with ``--after-phrase-target``, each carries the phrase's target
    on to the answer position."""
    return range(entity[1], length - 2)


def phrase_targets(form, countries: list[str], answers: list[str], phrase_target: str) -> list[str]:
    """What the visual phrase's last token learns to predict for each question of a batch.

    ``name``: the country's name; ``fact``: the answer on open questions, the name on yes/no ones;
    ``attribute``: the answer on open questions, and on yes/no ones the attribute the question
    compares (the continent for "Is this country in Asia?"), so the fact sits at the phrase and
    the last position only compares it with the textual constraint.
    """
    relation = form[0].relation
    if phrase_target == "name" or (phrase_target == "fact" and relation in _YES_NO):
        return countries
    if relation in _YES_NO:
        return [world.fact(c, _COMPARED[relation]) for c in countries]
    return answers


def answer_options(tokenizer, relation: str, countries: list[str]) -> torch.Tensor:
    """Token ids of every answer ``relation`` can have over ``countries`` (yes/no for yes/no ones)."""
    if relation in _YES_NO:
        words = ["yes", "no"]
    else:
        words = sorted({world.fact(c, relation) for c in countries})
    return torch.tensor(tokenizer.convert_tokens_to_ids(words))


def pretrain_vision(model, pool: torch.Tensor, steps: int, batch: int, lr: float, rng: random.Random) -> list[float]:
    """Train the vision tower alone to tell the countries' flags apart (a linear classifier on its
    CLS feature when the model keeps the CLS token, else on its mean patch feature), as LLaVA
    starts from a CLIP tower trained on its own task; the decoder then learns its route on
    features that already name the flag. Returns the loss per step.

    A mean-patch classifier puts the flag's identity in every patch, so a noised phrase still
    averages its way to the answer (recipe P in RESULTS.md); with the CLS token the identity
    is concentrated where the phrase reads it."""
    keep_cls = model.config.vision_feature_select_strategy == "full"
    tower = model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, pool.shape[0])
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    for _ in tqdm(range(steps), desc="pretraining the vision tower", unit="step"):
        picks = [rng.randrange(pool.shape[0]) for _ in range(batch)]
        pixels = torch.stack([pool[i, rng.randrange(pool.shape[1])] for i in picks])
        last = tower(pixels, output_hidden_states=True).hidden_states[-1]
        features = last[:, 0] if keep_cls else last[:, 1:].mean(1)
        loss = torch.nn.functional.cross_entropy(head(features), torch.tensor(picks))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def cls_name_distance(features: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between each image's projected CLS feature (``features[:, 0]``) and the
    input embedding of its country's name: the decoder's first layer normalises away the scale,
    so at cosine 1 the image token looks to the decoder exactly like the mentioned name."""
    cls = features.reshape(len(targets), -1, features.shape[-1])[:, 0]
    return (1 - torch.nn.functional.cosine_similarity(cls, embeddings[targets].detach(), dim=-1)).mean()


def cls_name_contrast(
    features: torch.Tensor,
    embeddings: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy of picking each image's country among ``candidates`` (name token ids) by the
    cosine between its projected CLS feature and their input embeddings, over ``temperature``.
    The cosine pull (:func:`cls_name_distance`) only draws the CLS feature towards its name; this
    also pushes it away from every other name, so the decoder cannot mistake one flag's token
    for a similar country's name. ``targets`` index ``candidates``."""
    cls = features.reshape(len(targets), -1, features.shape[-1])[:, 0]
    names = embeddings[candidates].detach()
    cosines = torch.nn.functional.cosine_similarity(cls[:, None], names[None], dim=-1)
    return torch.nn.functional.cross_entropy(cosines / temperature, targets)


def key_spread_penalty(keys: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the batch-centred keys ``[B, d]`` of questions about different
    countries (``labels [B]``): 0 when they are orthogonal, 1 when they are collinear; pairs about one
    country are free to agree."""
    unit = torch.nn.functional.normalize(keys - keys.mean(0, keepdim=True), dim=-1)
    different = labels[:, None] != labels[None]
    return ((unit @ unit.T)[different] ** 2).mean()


def decoder_parameters(model) -> list[torch.nn.Parameter]:
    """The text decoder's weights (language model and output head): what LLaVA's alignment stage
    keeps frozen while the vision tower and projector learn to feed it."""
    return list(model.model.language_model.parameters()) + list(model.lm_head.parameters())


def decoder_lr_factor(image_step: int, frozen_steps: int, scale: float) -> float:
    """The decoder's learning-rate factor at ``image_step`` (< 0 in the text stage): 1 as text,
    0 for the first ``frozen_steps`` image steps (alignment: the image must take the place of the
    name the decoder learned to read), then ``scale`` (a gentle full fine-tune)."""
    if image_step < 0:
        return 1.0
    return 0.0 if image_step < frozen_steps else scale


def train(
    steps: int,
    batch: int,
    renderings: int,
    seed: int,
    lr: float,
    out: Path | None,
    log_every: int = 100,
    identity_steps: int = 400,
    two_constraint_share: float = 0.5,
    route_mask_share: float = 0.0,
    named_share: float = 0.0,
    unmasked_tail: int = 0,
    text_steps: int = 0,
    mention_share: float = 0.0,
    init: Path | None = None,
    route_penalty: float = 0.0,
    name_at_phrase: float = 0.0,
    after_phrase_target: float = 0.0,
    noised_share: float = 0.0,
    phrase_target: str = "name",
    noised_answer: bool = False,
    phrase_layer: int | None = None,
    vision_steps: int = 0,
    reader: str = "phrase",
    text_route: str = "mask",
    frozen_decoder_steps: int = 0,
    decoder_lr_scale: float = 1.0,
    penalty_reduce: str = "mean",
    unmasked_penalty: bool = False,
    shadow_rows: int = 16,
    cls_token: bool = False,
    cls_name_loss: float = 0.0,
    cls_name_temperature: float = 0.0,
    route_gate: bool = False,
    reader_layers: int = 1,
    image_margin: float = IMAGE_MARGIN,
    gate_strength: float = STRENGTH,
    key_spread: float = 0.0,
):
    """Train a fresh demo model; returns ``(model, processor, loss curve)`` and saves to ``out``.

    With the routing options (all off by default; see the module docstring): text first
    (``text_steps``, cheap: no image): questions that name the country ("What is the
    capital of Peru?") and questions that refer back to a mention ("Peru is shown. What is the
    capital of this country?", the mention visible only from "this country": :func:`route_mask`),
    so the decoder learns facts about named countries and to resolve "this country" at its own
    tokens. Then ``steps`` steps with flags: ``identity_steps`` of "which country is this
    flag?", then every question form; ``route_mask_share`` of the image batches cut the image
    out of the attention of every text position but the visual phrase, so the image must take
    the mention's place (the last ``unmasked_tail`` steps use no mask); ``named_share`` of the
    batches name a country with a random flag shown (the named entity wins), ``mention_share``
    repeat the text-only mention questions.
    """
    torch.manual_seed(seed)
    model, processor = build_demo_model(seed, cls_token)
    if init is not None:  # continue from a saved demo model (same architecture and vocabulary)
        model.load_state_dict(type(model).from_pretrained(init).state_dict())
    gate_readers = reader_ids(processor.tokenizer) if route_gate else []
    if text_route not in ("mask", "penalty", "gate"):
        raise ValueError(f"text_route must be 'mask', 'penalty' or 'gate', got {text_route!r}")
    layers = model.config.text_config.num_hidden_layers
    if route_gate and not 1 <= reader_layers <= layers:
        raise ValueError(f"--reader-layers must be between 1 and the decoder's {layers} layers, got {reader_layers}")
    if route_gate and image_margin <= 0:
        raise ValueError(f"--image-margin must be positive, got {image_margin}")
    if route_gate and gate_strength <= 0:
        raise ValueError(f"--gate-strength must be positive, got {gate_strength}")
    if text_route == "gate" and not route_gate:
        raise ValueError("--text-route gate needs --route-gate (the mention is marked as an image token)")
    if route_penalty:
        model.set_attn_implementation("eager")  # the penalty needs the attention weights
    tokenizer = processor.tokenizer
    n_image = image_token_count(model.config)
    if cls_name_loss and not cls_token:
        raise ValueError("--cls-name-loss needs --cls-token (the CLS feature it aligns)")
    projected: dict[str, torch.Tensor] = {}
    if cls_name_loss or route_gate:  # keep the projector's output: the CLS feature is its first token
        model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: projected.update(features=out))
    image = (1, 1 + n_image)  # BOS, then the image tokens
    countries = world.training_countries()
    pool = render_pool(processor, countries, renderings, seed)
    forms = question_forms()
    identity_forms = [f for f in forms if f[0].relation == "country"]
    two_constraint_forms = [f for f in forms if "{textual}" in f[0].paraphrases[0]]
    one_constraint_forms = [f for f in forms if f not in two_constraint_forms]
    named_forms = [f for f in forms if f[0].relation != "country"]
    rng = random.Random(seed)
    vision_losses = pretrain_vision(model, pool, vision_steps, batch, lr, rng) if vision_steps else []
    content = slice(None, model.config.text_config.hidden_size - len(MARKERS) if route_gate else None)

    growth: list[tuple[float, float]] = []
    keys: dict[str, torch.Tensor] = {}  # layer 0's MLP keys (input of down_proj), for --key-spread
    if key_spread:
        model.model.language_model.layers[0].mlp.down_proj.register_forward_pre_hook(
            lambda _m, args: keys.update(layer0=args[0])
        )

    def impose_gate(strength: float = STRENGTH) -> None:
        """The gate with markers sized by the current content RMS of the text and image tokens,
        its norm weights following the residual's growth in the last image batch."""
        text_marker = TEXT_MARGIN * content_rms(model.get_input_embeddings().weight)
        install_route_gate(
            model,
            gate_readers,
            text_marker,
            image_margin * content_rms(projected["features"]),
            growth,
            strength=strength,
            reader_layers=reader_layers,
        )

    if route_gate:
        with torch.no_grad():
            model.model.get_image_features(pixel_values=pool[:, 0])
        impose_gate()
    params = list(model.parameters())
    decoder = decoder_parameters(model)
    groups = [
        {"params": [p for p in params if all(p is not d for d in decoder)]},
        {"params": decoder},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    total = text_steps + steps
    warmup = max(1, total // 20)

    def cosine(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))

    def decoder_rate(s: int) -> float:
        return cosine(s) * decoder_lr_factor(s - text_steps, frozen_decoder_steps, decoder_lr_scale)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, decoder_rate])
    model.train()
    curve, start, running = [], time.time(), 0.0
    bar = tqdm(range(total), desc="training demo model", unit="step")
    for step in bar:
        picks = [rng.randrange(len(countries)) for _ in range(batch)]
        names = [countries[i] for i in picks]
        image_step = step - text_steps  # < 0 in the text-first stage
        draw = rng.random()
        if image_step < 0:
            kind = "mention" if draw < 0.5 else "named_text"
        elif image_step < identity_steps:
            kind = "image"
        else:
            kind = "named_image" if draw < named_share else "mention" if draw < named_share + mention_share else "image"
        if kind == "image" and image_step < identity_steps:
            form = rng.choice(identity_forms)
        elif kind == "image":
            form = rng.choice(two_constraint_forms if rng.random() < two_constraint_share else one_constraint_forms)
        else:
            form = rng.choice(named_forms if kind.startswith("named") else forms)
        with_image = kind in ("image", "named_image")
        ids, answers, entity, mentioned = make_batch(
            tokenizer, n_image if with_image else 0, names, form, rng, True, kind.startswith("named"), kind == "mention"
        )
        length = ids.shape[1] - 1
        inputs = {"input_ids": ids[:, :-1]}
        if with_image:
            shown = [rng.randrange(len(countries)) for _ in picks] if kind == "named_image" else picks
            inputs["pixel_values"] = torch.stack([pool[i, rng.randrange(renderings)] for i in shown])
        masked = image_step < steps - unmasked_tail and rng.random() < route_mask_share
        if kind == "mention" and text_route == "mask":
            inputs["attention_mask"] = route_mask(length, mentioned, entity, batch)
        elif kind == "mention" and text_route == "gate":  # the name takes the image's place behind the gate
            inputs["inputs_embeds"] = mark_as_image(model.get_input_embeddings()(inputs.pop("input_ids")), mentioned)
        elif kind == "image" and masked:
            inputs["attention_mask"] = route_mask(length, image, entity, batch)
        penalised = route_penalty > 0 and (with_image or (kind == "mention" and text_route == "penalty"))
        noised = penalised and kind == "image" and image_step >= identity_steps and rng.random() < noised_share
        if noised:  # the trace's corruption (3 x the embeddings' std) on the visual phrase: it must not read the image
            embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
            sigma = model.get_input_embeddings().weight.detach().std()
            noise = torch.zeros_like(embeds)
            noise[:, entity[0] : entity[1]] = 3.0 * sigma * torch.randn(batch, entity[1] - entity[0], embeds.shape[-1])
            inputs["inputs_embeds"] = embeds + noise
        read_early = phrase_layer is not None and name_at_phrase and not noised
        shadowed = penalised and masked and unmasked_penalty and kind == "image" and not noised
        forward = model(
            **inputs, output_attentions=penalised and not shadowed, output_hidden_states=read_early or route_gate
        )
        if route_gate and with_image:
            growth[:] = layer_growth(forward.hidden_states, image)
        captured = dict(projected)  # this batch's projected image (a shadow forward replaces it)
        batch_keys = keys.get("layer0")  # likewise
        logits = forward.logits[:, -2:]
        answer_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -2:].reshape(-1))
        loss, extras = answer_loss, {}
        if noised:  # with the phrase garbled, no text position may read the flag
            extras["noised_mass"] = image_attention_mass(forward.attentions, image, entity, True, penalty_reduce)
            loss = route_penalty * extras["noised_mass"]
            if noised_answer:  # ... and the answer is unknown: uniform over the relation's answers
                options = answer_options(tokenizer, form[0].relation, countries)
                log_p = forward.logits[:, -2].log_softmax(-1)[:, options]
                extras["noised_answer"] = -log_p.mean()
                loss = loss + extras["noised_answer"]
        elif penalised:  # the image (or, text-only, the mentioned name) is read by the phrase alone
            readers = image_readers(entity, reader)
            source = mentioned if kind == "mention" else image
            if shadowed:  # the mask hid the image: charge the attention the unmasked model would give it
                unmasked = {k: v[:shadow_rows] for k, v in inputs.items() if k != "attention_mask"}
                attentions = model(**unmasked, output_attentions=True).attentions
            else:
                attentions = forward.attentions
            extras["image_mass"] = image_attention_mass(
                attentions, source, readers, kind == "named_image", penalty_reduce
            )
            loss = loss + route_penalty * extras["image_mass"]
        if name_at_phrase and not noised:
            # the entity phrase's last token ("this country", or a name) predicts the country it
            # stands for: the phrase is resolved to an entity at its own tokens, as a text decoder does
            # "fact": the answer itself where the relation precedes the phrase (every open question),
            # as ROME's subject enrichment; yes/no questions name the country
            targets = torch.tensor(tokenizer.convert_tokens_to_ids(phrase_targets(form, names, answers, phrase_target)))
            if read_early and phrase_layer is not None:  # the logit lens on the phrase after ``phrase_layer``
                hidden = forward.hidden_states[phrase_layer + 1][:, entity[1] - 1]
                phrase_logits = model.lm_head(model.model.language_model.norm(hidden))
            else:
                phrase_logits = forward.logits[:, entity[1] - 1]
            extras["name_loss"] = torch.nn.functional.cross_entropy(phrase_logits, targets)
            loss = loss + name_at_phrase * extras["name_loss"]
            after = words_after_phrase(entity, length)
            if after_phrase_target and len(after):
                # each carries the phrase's target on, so the answer position finds it one token back
                # whatever the template puts after the phrase
                carried = forward.logits[:, after.start : after.stop].reshape(-1, forward.logits.shape[-1])
                extras["after_phrase"] = torch.nn.functional.cross_entropy(
                    carried, targets.repeat_interleave(len(after))
                )
                loss = loss + after_phrase_target * extras["after_phrase"]
        if cls_name_loss and with_image:
            shown_names = [countries[i] for i in shown]
            embeddings = model.get_input_embeddings().weight
            if cls_name_temperature:
                candidates = torch.tensor(tokenizer.convert_tokens_to_ids(countries))
                extras["cls_name"] = cls_name_contrast(
                    captured["features"][..., content],
                    embeddings[:, content],
                    candidates,
                    torch.tensor(shown),
                    cls_name_temperature,
                )
            else:
                targets = torch.tensor(tokenizer.convert_tokens_to_ids(shown_names))
                extras["cls_name"] = cls_name_distance(
                    captured["features"][..., content], embeddings[:, content], targets
                )
            loss = loss + cls_name_loss * extras["cls_name"]
        if key_spread and not noised and batch_keys is not None:
            extras["key_spread"] = key_spread_penalty(batch_keys[:, entity[1] - 1], torch.tensor(picks))
            loss = loss + key_spread * extras["key_spread"]
        optimizer.zero_grad()
        loss.backward()
        if route_gate:  # the gate's own entries are set, not learned: keep them out of the clip's norm
            clear_gate_gradients(model)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if route_gate:  # the optimiser (weight decay, momentum) must not move the gate
            impose_gate()
        schedule.step()
        if not noised:
            running = 0.98 * running + 0.02 * answer_loss.item() if step else answer_loss.item()
        if (step + 1) % log_every == 0 or step + 1 == total:
            point = {"step": step + 1, "loss": round(running, 4), "seconds": round(time.time() - start, 1)}
            curve.append(point | {k: round(v.item(), 4) for k, v in extras.items()})
            bar.set_postfix(loss=f"{running:.3f}")
    if route_gate:  # trained behind the full wall; saved with the chosen strength (see --gate-strength)
        impose_gate(gate_strength)
    model.eval()
    model.set_attn_implementation("sdpa")
    recipe = {
        "route_penalty": route_penalty,
        "name_at_phrase": name_at_phrase,
        "after_phrase_target": after_phrase_target,
        "noised_share": noised_share,
        "phrase_target": phrase_target,
        "noised_answer": noised_answer,
        "phrase_layer": phrase_layer,
        "vision_steps": vision_steps,
        "reader": reader,
        "text_route": text_route,
        "frozen_decoder_steps": frozen_decoder_steps,
        "decoder_lr_scale": decoder_lr_scale,
        "penalty_reduce": penalty_reduce,
        "unmasked_penalty": unmasked_penalty,
        "shadow_rows": shadow_rows,
        "cls_token": cls_token,
        "cls_name_loss": cls_name_loss,
        "cls_name_temperature": cls_name_temperature,
        "route_gate": route_gate,
        "reader_layers": reader_layers,
        "image_margin": image_margin,
        "gate_strength": gate_strength,
        "vision_final_loss": round(sum(vision_losses[-20:]) / 20, 4) if len(vision_losses) >= 20 else None,
        "init": None if init is None else str(init),
        "text_steps": text_steps,
        "mention_share": mention_share,
        "steps": steps,
        "batch": batch,
        "renderings": renderings,
        "seed": seed,
        "lr": lr,
        "identity_steps": identity_steps,
        "two_constraint_share": two_constraint_share,
        "route_mask_share": route_mask_share,
        "named_share": named_share,
        "unmasked_tail": unmasked_tail,
        "key_spread": key_spread,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        with atomic_path(out / "training_curve.json") as tmp:
            tmp.write_text(json.dumps({**recipe, "curve": curve}, indent=1))
    return model, processor, curve


#: The shipped demo model's recipe: the command line's defaults (see the module docstring).
SHIPPED_RECIPE = {
    "steps": 3000,
    "lr": 1e-3,
    "named_share": 0.25,
    "name_at_phrase": 1.0,
    "phrase_target": "attribute",
    "after_phrase_target": 1.0,
    "phrase_layer": 0,
    "cls_token": True,
    "cls_name_loss": 1.0,
    "cls_name_temperature": 0.1,
    "route_gate": True,
    "gate_strength": 10.0,
    "key_spread": 10.0,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3600, help="steps with flags (after the text-only ones)")
    parser.add_argument("--batch", type=int, default=64, help="questions per step")
    parser.add_argument("--renderings", type=int, default=48, help="pre-rendered images per country")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, renderings and question draws")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (5%% warm-up, cosine decay)")
    parser.add_argument(
        "--identity-steps", type=int, default=400, help="first flag steps that ask only for the country"
    )
    parser.add_argument("--text-steps", type=int, default=0, help="text-only steps before the flags")
    parser.add_argument("--route-mask-share", type=float, default=0.0, help="share of image batches with the mask")
    parser.add_argument("--named-share", type=float, default=0.0, help="share of batches naming a country")
    parser.add_argument("--mention-share", type=float, default=0.0, help="share of text-only mention batches")
    parser.add_argument("--unmasked-tail", type=int, default=0, help="last steps without the mask")
    parser.add_argument(
        "--route-penalty", type=float, default=0.0, help="weight of the image attention mass of non-phrase positions"
    )
    parser.add_argument(
        "--name-at-phrase", type=float, default=0.0, help="weight of predicting the country at the phrase's last token"
    )
    parser.add_argument(
        "--after-phrase-target",
        type=float,
        default=0.0,
        help="with --name-at-phrase: weight of the words after the phrase predicting the phrase's target too",
    )
    parser.add_argument(
        "--noised-share", type=float, default=0.0, help="share of image batches with the visual phrase noised"
    )
    parser.add_argument(
        "--phrase-target", choices=("name", "fact", "attribute"), default="name", help="what --name-at-phrase predicts"
    )
    parser.add_argument(
        "--noised-answer",
        action="store_true",
        help="noised batches also learn a uniform answer over the relation's options (the referent is unknown)",
    )
    parser.add_argument(
        "--phrase-layer",
        type=int,
        default=None,
        help="read the phrase's target after this decoder layer (logit lens; default: the model's output)",
    )
    parser.add_argument(
        "--vision-steps", type=int, default=0, help="steps pretraining the vision tower alone (flag classifier)"
    )
    parser.add_argument(
        "--reader",
        choices=("phrase", "last"),
        default="phrase",
        help="which visual-phrase tokens the route penalty lets read the image: all, or only the last one",
    )
    parser.add_argument(
        "--text-route",
        choices=("mask", "penalty", "gate"),
        default="mask",
        help="how mention questions keep the name to the phrase: a training mask, the route penalty (unmasked), "
        "or the route gate (the name marked as an image token)",
    )
    parser.add_argument(
        "--frozen-decoder-steps",
        type=int,
        default=0,
        help="first flag steps with the decoder frozen (LLaVA's alignment: only the tower and projector learn)",
    )
    parser.add_argument(
        "--decoder-lr-scale", type=float, default=1.0, help="decoder learning-rate factor after the frozen steps"
    )
    parser.add_argument(
        "--penalty-reduce",
        choices=("mean", "max"),
        default="mean",
        help="route penalty over heads and positions: their mean, or the worst head and position per layer",
    )
    parser.add_argument(
        "--unmasked-penalty",
        action="store_true",
        help="masked image batches pay the route penalty on an unmasked forward of their first --shadow-rows questions",
    )
    parser.add_argument("--shadow-rows", type=int, default=16, help="questions in that unmasked forward")
    parser.add_argument(
        "--cls-token",
        action=argparse.BooleanOptionalAction,
        help="keep the vision tower's CLS token as the first image token",
    )
    parser.add_argument(
        "--cls-name-loss", type=float, default=0.0, help="weight of pulling the CLS feature to the name's embedding"
    )
    parser.add_argument(
        "--cls-name-temperature",
        type=float,
        default=0.0,
        help="with --cls-name-loss: contrast the CLS feature with every country's name (cosine / T, cross-entropy)",
    )
    parser.add_argument(
        "--route-gate",
        action=argparse.BooleanOptionalAction,
        help="build the route into the weights: only the visual phrase's last word reads the image, in layer 0",
    )
    parser.add_argument(
        "--reader-layers", type=int, default=1, help="with --route-gate: the first layers in which the phrase reads"
    )
    parser.add_argument(
        "--image-margin",
        type=float,
        default=IMAGE_MARGIN,
        help="with --route-gate: the image marker over the image features' content RMS (robustness to image noise)",
    )
    parser.add_argument(
        "--gate-strength",
        type=float,
        default=STRENGTH,
        help="with --route-gate: the saved gate's strength (training keeps the full wall); weaker lets a restored "
        "or edited phrase reach the answer, stronger keeps the image noise out (RESULTS.md, session 13)",
    )
    parser.add_argument(
        "--key-spread",
        type=float,
        default=0.0,
        help="weight of pushing apart layer 0's MLP keys at the phrase for different countries (shipped: 10)",
    )
    parser.add_argument("--init", type=Path, default=None, help="start from this saved demo model's weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="folder to save the model in")
    parser.set_defaults(**SHIPPED_RECIPE)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, _, curve = train(
        args.steps,
        args.batch,
        args.renderings,
        args.seed,
        args.lr,
        args.out,
        identity_steps=args.identity_steps,
        route_mask_share=args.route_mask_share,
        named_share=args.named_share,
        unmasked_tail=args.unmasked_tail,
        text_steps=args.text_steps,
        mention_share=args.mention_share,
        init=args.init,
        route_penalty=args.route_penalty,
        name_at_phrase=args.name_at_phrase,
        after_phrase_target=args.after_phrase_target,
        noised_share=args.noised_share,
        phrase_target=args.phrase_target,
        noised_answer=args.noised_answer,
        phrase_layer=args.phrase_layer,
        vision_steps=args.vision_steps,
        reader=args.reader,
        text_route=args.text_route,
        frozen_decoder_steps=args.frozen_decoder_steps,
        decoder_lr_scale=args.decoder_lr_scale,
        penalty_reduce=args.penalty_reduce,
        unmasked_penalty=args.unmasked_penalty,
        shadow_rows=args.shadow_rows,
        cls_token=args.cls_token,
        cls_name_loss=args.cls_name_loss,
        cls_name_temperature=args.cls_name_temperature,
        route_gate=args.route_gate,
        reader_layers=args.reader_layers,
        image_margin=args.image_margin,
        gate_strength=args.gate_strength,
        key_spread=args.key_spread,
    )
    print(json.dumps({"final_loss": curve[-1]["loss"], "seconds": curve[-1]["seconds"], "out": str(args.out)}))


if __name__ == "__main__":
    main()
