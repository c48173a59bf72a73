"""The route gate written into the demo model's weights (issue 11): only the visual phrase's last
word reads the image, and only in layer 0, in an ordinary LLaVA forward with no mask."""

from __future__ import annotations

import pytest
import torch

from mllm_lens.data import world
from mllm_lens.demo.build import build_demo_model, image_token_count, prompt_ids
from mllm_lens.demo.route_gate import IMAGE, NON_READER, READER, install_route_gate, mark_as_image, reader_ids

QUESTIONS = (
    "What is the capital of this country?",
    "Which country does this flag belong to?",
    "Is the country of this flag located in Asia?",
    "What is the capital of Peru?",  # named: no reader at all
)


def gated_model(seed: int = 0):
    model, processor = build_demo_model(seed, cls_token=True)
    install_route_gate(model, reader_ids(processor.tokenizer), text_marker=0.5, image_marker=5.0)
    model.set_attn_implementation("eager")
    return model, processor


def image_reads(model, processor, question: str, pixels: torch.Tensor):
    """Per layer: the largest share of attention (over heads) each text position gives the image."""
    tokenizer = processor.tokenizer
    n_image = image_token_count(model.config)
    ids = torch.tensor([prompt_ids(tokenizer, question, n_image)])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    text = torch.arange(1 + n_image, ids.shape[1])
    return reads_of(out.attentions, ids, text, (1, 1 + n_image), tokenizer) + (out.hidden_states, text)


def reads_of(attentions, ids, text, source: tuple[int, int], tokenizer):
    reads = [a[0, :, text, source[0] : source[1]].sum(-1).amax(0) for a in attentions]
    is_reader = torch.isin(ids[0, text], torch.tensor(reader_ids(tokenizer)))
    return reads, is_reader


@pytest.mark.parametrize("question", QUESTIONS)
def test_only_readers_read_the_image_and_only_in_layer_0(question):
    model, processor = gated_model()
    pixels = torch.randn(1, 3, 64, 64)
    reads, is_reader, _, _ = image_reads(model, processor, question, pixels)
    for layer, read in enumerate(reads):
        assert read[~is_reader].max().item() < 1e-12, (question, layer)
        if layer:
            assert read[is_reader].numel() == 0 or read[is_reader].max().item() < 1e-12
    if is_reader.any():  # an untrained reader spreads its attention: the image is a large share of it
        assert reads[0][is_reader].min().item() > 0.5


def test_the_markers_hold_in_every_layer_and_the_gate_survives_training_steps():
    from mllm_lens.demo.train import train

    model, processor, _ = train(
        steps=4, batch=2, renderings=1, seed=0, lr=1e-2, out=None, log_every=2, identity_steps=1,
        cls_token=True, route_gate=True, text_steps=4, text_route="gate", cls_name_loss=1.0,
    )  # fmt: skip
    model.set_attn_implementation("eager")
    reads, is_reader, hidden, text = image_reads(model, processor, QUESTIONS[0], torch.randn(1, 3, 64, 64))
    assert all(read[~is_reader].max().item() < 1e-12 for read in reads)
    embedded = hidden[0][0, text]
    marker = embedded[~is_reader, NON_READER][0].item()
    assert marker > 0 and torch.all(embedded[~is_reader, NON_READER] == marker)
    for states in hidden[:-1]:  # no attention or MLP output writes a marker (the last is after the final norm)
        assert torch.all(states[0, text, NON_READER] + states[0, text, READER] == marker)
        assert torch.all(states[0, text[is_reader], NON_READER] == 0)
        assert torch.all(states[0, text[~is_reader], READER] == 0)
        assert torch.all(states[0, text, IMAGE] == 0)
        assert torch.all(states[0, 1:65, IMAGE] == states[0, 1, IMAGE]) and states[0, 1, IMAGE] > 0


def test_without_the_gate_every_position_reads_the_image():
    """The check above is not vacuous: an ungated model's answer position reads the image."""
    model, processor = build_demo_model(0, cls_token=True)
    model.set_attn_implementation("eager")
    reads, is_reader, _, _ = image_reads(model, processor, QUESTIONS[0], torch.randn(1, 3, 64, 64))
    assert reads[0][~is_reader].min().item() > 0.1


def test_reader_words_are_the_last_words_of_the_visual_phrases():
    _, processor = build_demo_model(0)
    tokenizer = processor.tokenizer
    last_words = {phrase.split()[-1] for phrase in world.VISUAL_PHRASES}
    assert set(tokenizer.convert_ids_to_tokens(reader_ids(tokenizer))) == last_words


def test_a_name_marked_as_an_image_is_read_only_by_the_readers_in_layer_0():
    """Text-first training (``--text-route gate``): "Peru is shown. What is the capital of this country?"
    with "Peru" marked as an image token reaches the prompt as a flag does."""
    model, processor = gated_model()
    tokenizer = processor.tokenizer
    ids = torch.tensor([prompt_ids(tokenizer, "Peru is shown. What is the capital of this country?", 0)])
    name = ids[0].tolist().index(tokenizer.convert_tokens_to_ids("Peru"))
    embeds = mark_as_image(model.get_input_embeddings()(ids), (name, name + 1))
    assert embeds[0, name, IMAGE] > 0 and embeds[0, name, NON_READER] == 0
    with torch.no_grad():
        attentions = model(inputs_embeds=embeds, output_attentions=True).attentions
    text = torch.arange(name + 1, ids.shape[1])
    reads, is_reader = reads_of(attentions, ids, text, (name, name + 1), tokenizer)
    assert reads[0][is_reader].min().item() > 0.01
    assert all(read[~is_reader].max().item() < 1e-12 for read in reads)
    assert all(read[is_reader].max().item() < 1e-12 for read in reads[1:])


def test_the_gates_own_gradients_are_cleared_before_the_clip():
    """The reserved rows' gradients are huge (keys of ~1e4 on image tokens): left in, they set the
    clip's norm and every real weight barely moves (recipes G1-G7 in RESULTS.md)."""
    from mllm_lens.demo.route_gate import clear_gate_gradients, reserved_rows

    model, processor = gated_model()
    tokenizer = processor.tokenizer
    ids = torch.tensor([prompt_ids(tokenizer, QUESTIONS[0], image_token_count(model.config), "Lima")])
    logits = model(input_ids=ids[:, :-1], pixel_values=torch.randn(1, 3, 64, 64)).logits
    torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    clear_gate_gradients(model)
    cleared = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert norm > 100 * cleared  # what the clip saw before
    assert 0 < cleared < 100
    layer = model.model.language_model.layers[0].self_attn
    rows = [i for pair in reserved_rows(model.config.text_config) for i in pair]
    assert torch.all(layer.q_proj.weight.grad[rows] == 0) and layer.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reader_layers": 0}, "reader-layers must be between 1 and the decoder's 4 layers, got 0"),
        ({"reader_layers": 5}, "reader-layers must be between 1 and the decoder's 4 layers, got 5"),
        ({"image_margin": 0.0}, "image-margin must be positive"),
        ({"gate_strength": 0.0}, "gate-strength must be positive"),
        ({"route_gate": False, "text_route": "gate"}, "needs --route-gate"),
    ],
)
def test_gate_options_out_of_range_are_refused_before_training(options, message):
    from mllm_lens.demo.train import train

    base = dict(steps=1, batch=2, renderings=1, seed=0, lr=1e-3, out=None, route_gate=True)
    with pytest.raises(ValueError, match=message):
        train(**(base | options))


def test_gate_leak_reads_zero_on_a_gated_model_and_the_image_reads_of_an_ungated_one():
    """The evaluate measure of whether a corruption opens the gate: a gated model keeps every
    non-reader off the image under phrase noise; an ungated one reads it (so 0 is not vacuous)."""
    from mllm_lens.demo.mechanism import GATE_OPEN, gate_leak, mechanism_records
    from mllm_lens.models.lens_model import LensModel

    records = mechanism_records(3)
    model, processor = gated_model()
    gated = gate_leak(LensModel.wrap(model, processor), records)
    assert gated["gate_leak_phrase_noise"] < 1e-9 and gated["gate_opened_phrase_noise"] == 0
    assert gated["gate_leak_n"] == 3 and model.config._attn_implementation == "eager"
    plain, processor = build_demo_model(0, cls_token=True)
    ungated = gate_leak(LensModel.wrap(plain, processor), records)
    assert ungated["gate_leak_phrase_noise"] > 10 * GATE_OPEN and ungated["gate_opened_image_noise"] == 3
    assert plain.config._attn_implementation != "eager"  # restored


def test_the_saved_gate_has_the_chosen_strength_and_still_walls_off_the_image():
    """``--gate-strength``: training keeps the full wall, the saved model's gate is weakened so a
    restored or edited phrase can reach the answer (RESULTS.md, session 13)."""
    from mllm_lens.demo.route_gate import STRENGTH, reserved_rows
    from mllm_lens.demo.train import train

    common = dict(steps=2, batch=2, renderings=1, seed=0, lr=1e-3, out=None, log_every=1, identity_steps=1,
                  cls_token=True, route_gate=True)  # fmt: skip
    rows = [row for row, _ in reserved_rows(build_demo_model(0)[0].config.text_config)]
    for strength in (STRENGTH, 10.0):
        model, processor, _ = train(**common, gate_strength=strength)
        for layer in model.model.language_model.layers:
            attention = layer.self_attn
            assert attention.q_proj.weight[rows].abs().max().item() == pytest.approx(strength**0.5)
            assert attention.k_proj.weight[rows].abs().max().item() == pytest.approx(strength**0.5)
        model.set_attn_implementation("eager")
        reads, is_reader, _, _ = image_reads(model, processor, QUESTIONS[0], torch.randn(1, 3, 64, 64))
        assert all(read[~is_reader].max().item() < 1e-6 for read in reads)
