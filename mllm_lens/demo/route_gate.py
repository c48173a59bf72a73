"""A route built into the demo model's weights: only the visual phrase may read the image.

Every training-time pressure tried for issue 11 (masks, penalties; ``benchmarks/RESULTS.md``,
"Demo model recipes") left some text position reading the image directly, most often the
answer position in layer 0, so the answer never depended on the visual constraint alone. The
gate makes that read impossible in the model itself, with ordinary LLaVA weights (no custom
code, no mask at inference):

* three residual coordinates carry fixed markers: ``IMAGE`` on image tokens (the projector's
  bias), ``NON_READER`` on every text token but the *readers* (the last words of the visual
  phrases: "country", "nation", "flag", "image"), ``READER`` on the readers. No attention or MLP
  output writes them, so they hold in every layer, and nothing else reads them (zero columns;
  the MLP's and the final norm's weights are 0 there);
* in each head, one query/key pair (RoPE's slowest, so position barely turns it) is reserved:
  the key is ``IMAGE`` and the query is ``-NON_READER`` in layer 0, ``-(NON_READER + READER)``
  after, both times ``strength``. A text query then scores every image key thousands of logits
  below any text key, except a reader's query in layer 0, whose reserved pair is zero.

So the image enters the text only at the readers, in layer 0, as the paper finds for LLaVA (the
visual constraint's tokens receive the image through early attention), and training shapes the
rest. :func:`install_route_gate` re-imposes the gate after every optimiser step.

**Its weak point: the trace's noise** (measured). Noise of 3 x the std of the embeddings (or of
the image features) is added to every coordinate of a corrupted token, markers included, and a
marker pushed below zero turns the block into a pull: every gated query then reads that token with
all its attention. A marker cannot outgrow the noise, since it inflates the std it is measured
against: one coordinate of 128 reaches at most sqrt(128) / 3 = 3.8 noise standard deviations, and
the library's default image noise (seed 0) draws -3.04 on that coordinate for one of the 65 image
tokens. Image markers at 20 x the image features' content RMS (~3.4 standard deviations) still
flipped on 2 of 28 questions (recipes G4, G6 in RESULTS.md); raised to ``IMAGE_MARGIN`` = 30 x on
G8's weights, none of the 28 did, at the same accuracy (0.948). Such a margin shrinks the content
every image token carries into the first layer to ~0.35 of its size after the norm. Text markers
that large slowed training (G4 vs G6), so ``TEXT_MARGIN`` is smaller; the default draws on a
phrase's marker coordinates are >= -0.41 standard deviations, and phrase noise opened no gate.
Other seeds can still flip a marker now and then.

**Its second weak point: the strength itself** (measured on recipe G9, RESULTS.md session 13).
Noise on the phrase gives its tokens a nonzero ``IMAGE`` coordinate, which the reserved key turns
into ~1e6 x the draw: the noised phrase is then walled off from every later position (or draws all
their attention), so restoring its MLP or attention output reaches nothing; and MultEdit's update
writes layer rows at the marker coordinates, which moves every prompt's gate. A weaker ``strength``
(<= 30) lets the trace find the phrase's layer-0 MLP and paper-key edits take, but then the image
noise opens the gate.
"""

from __future__ import annotations

import torch

#: Residual coordinates of the markers (the last three of the decoder's hidden size).
IMAGE, NON_READER, READER = -3, -2, -1
MARKERS = (IMAGE, NON_READER, READER)
#: The words that may read the image: the last word of each visual phrase.
READERS = ("country", "nation", "flag", "image")
#: A marker's size over the RMS of its tokens' other coordinates (see the module docstring).
TEXT_MARGIN = 5.0
IMAGE_MARGIN = 30.0
#: Product of the reserved query and key weights: a gated query scores an image key ~1e7 logits
#: below a text key (only those scores are large: a text key's and a reader's pair are zero).
STRENGTH = 1e6


def reserved_rows(config) -> list[tuple[int, int]]:
    """``(row, partner)`` of the reserved query/key pair of each head: RoPE turns dimension
    ``i`` with ``i + head_dim / 2``; the last pair turns slowest (1.8e-4 rad per token here)."""
    head_dim = config.hidden_size // config.num_attention_heads
    half = head_dim // 2
    return [(h * head_dim + half - 1, h * head_dim + head_dim - 1) for h in range(config.num_attention_heads)]


def reader_ids(tokenizer) -> list[int]:
    """Token ids of :data:`READERS` (each must be one token of the tokenizer)."""
    ids = tokenizer.convert_tokens_to_ids(list(READERS))
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"every reader word must be in the vocabulary: {READERS}")
    return ids


def content_rms(features: torch.Tensor) -> float:
    """RMS of the coordinates that are not markers."""
    return features.detach()[..., : features.shape[-1] - len(MARKERS)].float().pow(2).mean().sqrt().item()


def mark_as_image(embeds: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """``embeds`` with the tokens in ``span`` marked as image tokens (their text markers moved to
    ``IMAGE``): in text-only training, a mentioned name then reaches the rest of the prompt only
    through the readers, in layer 0, as an image does."""
    hidden = embeds.shape[-1]
    out = embeds.clone()
    size = embeds[:, span[0] : span[1], [hidden + NON_READER, hidden + READER]].sum(-1)
    out[:, span[0] : span[1], [hidden + NON_READER, hidden + READER]] = 0.0
    out[:, span[0] : span[1], hidden + IMAGE] = size
    return out


def layer_growth(hidden_states, image: tuple[int, int]) -> list[tuple[float, float]]:
    """Per decoder layer, how much the text and the image tokens' residual has grown since the
    input (content RMS ratio). The gate's norm weights follow it, so a marker keeps its size after
    the norm in every layer rather than fading as the residual grows."""
    text = [content_rms(h[:, image[1] :]) for h in hidden_states[:-1]]
    pictures = [content_rms(h[:, image[0] : image[1]]) for h in hidden_states[:-1]]
    return [(t / text[0], p / pictures[0]) for t, p in zip(text, pictures, strict=True)]


@torch.no_grad()
def clear_gate_gradients(model) -> None:
    """Zero the gradient of every weight entry the gate sets. The reserved query rows see keys of
    ~1e4 on image tokens, so their gradients are huge; left in, they dominate the gradient norm and
    the clip scales every other weight's step down to almost nothing (recipes G1-G7 in RESULTS.md
    barely trained: the phrase's first-layer read stayed at its random-init spread)."""
    text = model.model.language_model
    config = text.config
    markers = [config.hidden_size + m for m in MARKERS]
    reserved = [i for pair in reserved_rows(config) for i in pair]

    def clear(parameter: torch.nn.Parameter, index) -> None:
        if parameter.grad is not None:
            parameter.grad[index] = 0.0

    clear(model.get_input_embeddings().weight, (slice(None), markers))
    projector = model.model.multi_modal_projector.linear_2
    clear(projector.weight, markers)
    clear(projector.bias, markers)
    clear(text.norm.weight, markers)
    for layer in text.layers:
        attention = layer.self_attn
        clear(attention.o_proj.weight, markers)
        clear(layer.mlp.down_proj.weight, markers)
        clear(layer.post_attention_layernorm.weight, markers)
        clear(layer.input_layernorm.weight, markers)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            clear(projection.weight, (slice(None), markers))
        clear(attention.q_proj.weight, reserved)
        clear(attention.k_proj.weight, reserved)


@torch.no_grad()
def install_route_gate(
    model,
    readers: list[int],
    text_marker: float,
    image_marker: float,
    growth: list[tuple[float, float]] | None = None,
    strength: float = STRENGTH,
    reader_layers: int = 1,
) -> None:
    """Write the gate into ``model``'s weights (idempotent: call it after every optimiser step).
    ``text_marker`` and ``image_marker`` are the markers' sizes (see :data:`TEXT_MARGIN`); ``growth``
    the residual's per layer (:func:`layer_growth`; none: 1); the readers read the image in the
    first ``reader_layers`` layers."""
    text = model.model.language_model
    config = text.config
    image, non_reader, reader = (config.hidden_size + m for m in MARKERS)
    markers = [image, non_reader, reader]
    embed = model.get_input_embeddings().weight
    embed[:, markers] = 0.0
    embed[:, non_reader] = text_marker
    embed[readers, non_reader] = 0.0
    embed[readers, reader] = text_marker
    projector = model.model.multi_modal_projector.linear_2
    projector.weight[markers] = 0.0
    projector.bias[markers] = 0.0
    projector.bias[image] = image_marker
    text.norm.weight[markers] = 0.0
    scale = strength**0.5
    for index, layer in enumerate(text.layers):
        attention, mlp = layer.self_attn, layer.mlp
        attention.o_proj.weight[markers] = 0.0
        mlp.down_proj.weight[markers] = 0.0
        layer.post_attention_layernorm.weight[markers] = 0.0
        text_growth, image_growth = growth[index] if growth else (1.0, 1.0)
        layer.input_layernorm.weight[[non_reader, reader]] = text_growth
        layer.input_layernorm.weight[image] = image_growth
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight[:, markers] = 0.0
        gated = [non_reader] if index < reader_layers else [non_reader, reader]
        for row, partner in reserved_rows(config):
            for projection in (attention.q_proj, attention.k_proj):
                projection.weight[[row, partner]] = 0.0
            attention.q_proj.weight[row, gated] = -scale
            attention.k_proj.weight[row, image] = scale
