"""Probes: templates, constraint spans, and clear errors for bad input."""

from __future__ import annotations

import pytest
from PIL import Image

import mllm_lens as ml
from mllm_lens.probe import PAPER_TEMPLATE


def test_paper_template_for_llava_1_5(models, probe):
    encoded = probe.encode(models["llava"])
    assert encoded.prompt == PAPER_TEMPLATE.format(question="which continent is this country in")
    assert encoded.prompt.count("?") == 1


def test_constraint_spans_cover_the_phrase(models, arch, probe):
    encoded = probe.encode(models[arch])
    start, end = encoded.spans["this country"]
    assert encoded.tokens[start:end] == ["this", "country"]
    start, end = encoded.spans["continent"]
    assert encoded.tokens[start:end] == ["continent"]
    img_start, img_end = encoded.image_span
    assert all(label.startswith("<img") for label in encoded.labels[img_start:img_end])
    assert encoded.labels[img_start] == "<img 0,0>"


def test_constraint_match_is_case_insensitive_when_unique(models, image):
    probe = ml.Probe(image, "Which continent is this country in?", [ml.visual("This country")])
    encoded = probe.encode(models["llava"])
    start, end = encoded.spans["This country"]
    assert encoded.tokens[start:end] == ["this", "country"]


def test_missing_constraint_names_phrase_and_shows_tokens(models, image):
    probe = ml.Probe(image, "which continent is this country in?", [ml.textual("Golden Globe")])
    with pytest.raises(ml.ProbeError, match="'Golden Globe'.*not in the question") as info:
        probe.encode(models["llava"])
    assert "Tokenized prompt" in str(info.value) and "'continent'" in str(info.value)


def test_constraint_spanning_the_image_placeholder_is_refused(models, image):
    probe = ml.Probe(image, "which continent is this country in?", [ml.visual("<image> this")])
    with pytest.raises(ml.ProbeError, match="spans the image placeholder"):
        probe.encode(models["llava"])


def test_question_with_image_token_is_refused(models, image):
    with pytest.raises(ml.ProbeError, match="contains the image token"):
        ml.Probe(image, "what is <image> here?", ["here"]).encode(models["llava"])


@pytest.mark.parametrize("answer,match", [("  ", "answer is empty"), ("zzzunknownzzz", "unknown to the tokenizer")])
def test_bad_answers(models, image, answer, match):
    with pytest.raises(ml.ProbeError, match=match):
        ml.Probe(image, "which continent is this country in?", ["this country"], answer=answer).encode(models["llava"])


def test_answer_sets_the_target(models, image):
    probe = ml.Probe(image, "which continent is this country in?", ["this country"], answer="Europe")
    encoded = probe.encode(models["llava"])
    assert models["llava"].tokenizer.convert_ids_to_tokens(encoded.target_id) == "Europe"
    result = ml.trace(models["llava"], probe, ml.noise(), site="mlp", progress=False)
    assert result.target_token == "Europe"


@pytest.mark.parametrize(
    "template,match", [("<image> no field", "no '\\{question\\}'"), ("{question}", "no image token")]
)
def test_bad_templates(models, image, template, match):
    probe = ml.Probe(image, "which continent?", ["continent"], template=template)
    with pytest.raises(ml.ProbeError, match=match):
        probe.encode(models["llava"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I", "1"])
@pytest.mark.parametrize("size", [(3, 5), (50, 40), (700, 90)])
def test_images_in_any_mode_and_size(models, arch, mode, size):
    image = Image.new("RGB", size, (200, 30, 90)).convert(mode)
    encoded = ml.Probe(image, "which continent is this country in?", ["this country"]).encode(models[arch])
    assert encoded.model_inputs["pixel_values"].shape[-1] == models[arch].hf_model.config.vision_config.image_size
    embeds = models[arch].decoder_inputs(encoded.model_inputs)
    assert embeds.shape[1] == encoded.length


def test_non_image_is_refused():
    with pytest.raises(ml.ProbeError, match="PIL.Image"):
        ml.Probe("not an image", "which continent?", ["continent"])  # type: ignore[arg-type]


def test_chat_template_is_used_when_the_processor_has_one(saved_models, image):
    model = ml.load(saved_models["llava_next"])
    model.processor.chat_template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
    )
    encoded = ml.Probe(image, "which continent is this country in?", ["this country"]).encode(model)
    assert encoded.prompt == "USER: <image>\nwhich continent is this country in? ASSISTANT:"
    start, end = encoded.spans["this country"]
    assert encoded.tokens[start:end] == ["this", "country"]


def test_llava_next_layout_rows_end_in_newlines(models, image):
    encoded = ml.Probe(image, "which continent is this country in?", ["this country"]).encode(models["llava_next"])
    layout = encoded.patch_layout
    base = [label for label in layout.labels if label.startswith("<img ") and "," in label]
    assert len(base) == layout.rows * layout.cols
    assert layout.labels[: len(base)] == [f"<img {r},{c}>" for r in range(layout.rows) for c in range(layout.cols)]
    rest = layout.labels[len(base) :]
    assert rest and rest[-1] == "<img \\n>"
    row_of = [label.split()[1].split(",")[0] for label in rest if label.startswith("<img+")]
    assert rest.count("<img \\n>") == len(dict.fromkeys(row_of))
