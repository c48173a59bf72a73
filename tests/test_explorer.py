"""The Explorer without a browser: examples, marked constraints, uploads, runs, edits, bad messages."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

import mllm_lens as ml
from mllm_lens.widgets import Explorer, PatchOverlay, TraceHeatmap
from mllm_lens.widgets._base import MODEL_LOCK
from mllm_lens.widgets._examples import question_tokens

# The planted model's MLP outputs are large; these MultEdit settings move δ enough (see test_editing).
PLANTED_EDIT = dict(lr=5.0, steps=40, weight_decay=0.0, stop_prob=0.9)


@pytest.fixture(scope="module")
def demo():
    return ml.load("demo")


@pytest.fixture
def explorer(demo):
    """Default demo examples; one panel (hidden states) keeps each run well under a second."""
    ex = Explorer(demo, sites=("hidden",))
    yield ex
    assert ex.wait(60)


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, param in model.hf_model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def run(ex: Explorer) -> None:
    ex.run()
    assert ex.wait(60)
    assert not ex.error, ex.error


def test_starts_on_the_first_example_with_its_constraint_marked(explorer):
    c = explorer.controls
    assert len(c.examples) == 7 and c.example == 0 and c.examples[0].startswith("Brazil:")
    assert c.question == "What is the capital of this country?"
    assert [t["text"] for t in c.tokens] == ["What", "is", "the", "capital", "of", "this", "country", "?"]
    assert c.marks == [{"start": 5, "end": 7, "kind": "visual"}]
    assert c.constraints == [{"text": "this country", "kind": "visual"}]
    assert c.corruption == "image" and [o["value"] for o in c.corruptions] == ["image", "noise:this country"]
    assert c.key_token == "constraint"  # MultEdit's key: the paper's, which the demo model's route needs
    assert c.image.startswith(b"\x89PNG") and c.status == "idle" and not c.error
    assert explorer.children == (c,)


def test_run_shows_heatmap_overlay_and_the_answer(explorer):
    run(explorer)
    c = explorer.controls
    assert isinstance(explorer.heatmap, TraceHeatmap) and isinstance(explorer.overlay, PatchOverlay)
    assert explorer.children == (c, explorer.heatmap, explorer.overlay)
    assert np.isfinite(explorer.heatmap.scores).all() and explorer.heatmap.status == "idle"
    assert explorer.overlay.values.shape[0] == demo_layers(explorer)
    assert c.answer["token"] == c.answer["expected"] == "Brasilia"
    assert c.answer["clean_prob"] > 0.5 > c.answer["corrupted_prob"]
    assert c.answer["corruption"].startswith("image noise") and c.answer["run"] == 1 == c.runs_done
    assert c.status == "idle" and c.notes == [] and 0 <= c.edit_layer < demo_layers(explorer)
    first = explorer.heatmap
    run(explorer)  # a second run replaces the views
    assert explorer.heatmap is not first and c.runs_done == 2 and first.comm is None


def test_the_answer_and_notes_appear_before_the_figures_so_nothing_pushes_them_down(explorer):
    """The answer block sits above the figures: filled only when the run ended, it moved the heatmap
    (and the pointer's target) down by its height after the heatmap had appeared."""
    events = []
    explorer.controls.observe(lambda change: events.append("answer") if change["new"] else None, "answer")
    explorer.observe(lambda change: events.append(f"figures {len(change['new']) - 1}"), "children")
    run(explorer)
    assert events == ["answer", "figures 1", "figures 2"]
    assert explorer.controls.answer["run"] == 1 == explorer.controls.runs_done


def test_the_overlay_names_its_corruption_and_the_heatmaps_when_they_differ(explorer):
    run(explorer)  # image noise: the overlay reuses the heatmap's trace
    assert explorer.overlay.corruption == "image noise on all visual tokens"
    assert explorer.overlay.target_token == "Brasilia"
    explorer.request({"type": "corruption", "value": "noise:this country"})
    run(explorer)  # phrase noise on the heatmap; the overlay still traces the image noised
    assert explorer.heatmap.results["hidden"].settings["corruption"]["kind"] == "constraint_noise"
    assert explorer.overlay.corruption == (
        "image noise on all visual tokens (the heatmap above used noise on 'this country')"
    )


def demo_layers(ex: Explorer) -> int:
    return ex.model.num_layers


def test_marking_tokens_builds_the_constraints_and_the_probe(explorer):
    explorer.select(1)  # "Is this country in Oceania?"
    c = explorer.controls
    assert c.constraints == [{"text": "this country", "kind": "visual"}, {"text": "Oceania", "kind": "textual"}]
    explorer.mark([(4, 5, "visual"), (0, 1, "textual")])
    assert not c.error
    assert c.marks == [{"start": 0, "end": 1, "kind": "textual"}, {"start": 4, "end": 5, "kind": "visual"}]
    probe = explorer.probe()
    assert [(k.text, k.kind) for k in probe.constraints] == [("Is", "textual"), ("Oceania", "visual")]
    assert probe.answer is None and probe.question == c.question
    assert c.corruption == "image"  # still offered, so kept
    explorer.mark([(4, 5, "textual")])
    assert [o["value"] for o in c.corruptions] == ["image", "noise:Oceania"]


def test_only_textual_constraints_default_to_noise_on_the_first(demo, explorer):
    image = explorer.probe().image
    ex = Explorer(demo, [ml.Probe(image, "Is this country in Asia?", [ml.textual("Asia")])], sites=("hidden",))
    assert ex.controls.corruption == "noise:Asia"
    run(ex)
    assert ex.controls.answer["corruption"] == "noise on 'Asia'"
    assert ex.session.corruption.describe(ex.session.encoded)["constraint"] == "Asia"
    ex.mark([(1, 3, "visual"), (4, 5, "textual")])
    assert ex.controls.corruption == "noise:Asia"  # still offered, so kept
    ex.select(0)  # picking an example resets it to the default
    assert ex.controls.corruption == "noise:Asia"


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ("x", "Spans must be a list"),
        ([{"start": 0, "end": 0, "kind": "visual"}], "out of range"),
        ([{"start": 7, "end": 9, "kind": "visual"}], "out of range"),
        ([{"start": -1, "end": 1, "kind": "visual"}], "out of range"),
        ([{"start": 0, "end": 1.5, "kind": "visual"}], "must be integers"),
        ([{"start": True, "end": 1, "kind": "visual"}], "must be integers"),
        ([{"start": 0, "end": 1, "kind": "secret"}], "Span kind"),
        ([{"start": 0, "end": 2, "kind": "visual"}, {"start": 1, "end": 3, "kind": "textual"}], "overlaps"),
        ([[0, 1, "visual"]], "must be an object"),
        ([{"start": 7, "end": 8, "kind": "textual"}], "Constraint '?' (textual) is not in the question 'What"),
    ],
)
def test_bad_spans_show_an_error_and_leave_the_marks(explorer, spans, message):
    before = list(explorer.controls.marks)
    explorer.request({"type": "marks", "spans": spans})
    assert message in explorer.error
    assert explorer.controls.marks == before
    explorer.mark([(6, 7, "visual")])  # the next good request clears the error
    assert not explorer.error and explorer.controls.constraints == [{"text": "country", "kind": "visual"}]


def test_a_repeated_phrase_is_marked_with_its_occurrence(explorer):
    explorer.set_question("Name the capital city of the country of this flag.")
    texts = [t["text"] for t in explorer.controls.tokens]
    second = texts.index("the", texts.index("the") + 1)
    explorer.mark([(second, second + 1, "textual")])
    assert not explorer.error
    assert explorer.controls.constraints == [{"text": "the", "kind": "textual", "occurrence": 1}]
    assert explorer.controls.marks == [{"start": second, "end": second + 1, "kind": "textual"}]
    encoded = explorer.probe().encode(explorer.model)
    start = encoded.spans["the"][0]
    assert encoded.tokens[start - 2 : start] == ["city", "of"]  # the second "the"


def test_a_new_question_keeps_the_constraints_it_still_contains(explorer):
    explorer.set_question("Which city is the capital of this country?")
    c = explorer.controls
    assert c.constraints == [{"text": "this country", "kind": "visual"}]
    assert [t["text"] for t in c.tokens][c.marks[0]["start"] : c.marks[0]["end"]] == ["this", "country"]
    explorer.set_question("Which city is the capital?")
    assert c.marks == [] and c.constraints == [] and not explorer.error


def test_upload_of_png_bytes_replaces_the_image(explorer):
    explorer.upload(png(), "red.png", "What is the capital of this country?")
    c = explorer.controls
    assert not explorer.error and c.example == -1 and c.source == "upload: red.png"
    assert explorer.probe().image.size == (40, 30) and c.constraints == [{"text": "this country", "kind": "visual"}]
    run(explorer)
    assert c.answer["expected"] is None and np.isfinite(explorer.heatmap.scores).all()


@pytest.mark.parametrize(
    ("buffers", "message"),
    [
        ([b"definitely not an image"], "Cannot read the uploaded file as an image"),
        ([png()[:40]], "Cannot read the uploaded file as an image"),
        ([], "Expected one binary buffer, got 0"),
        ([png(), png()], "Expected one binary buffer, got 2"),
        ([b"\0" * 5000], "The file is 5 KB; the limit is 4 KB."),
        ([b""], "The file is empty."),
    ],
)
def test_bad_uploads_show_a_clear_error(demo, buffers, message):
    ex = Explorer(demo, sites=("hidden",), max_upload_bytes=4096)
    before = ex.controls.image
    ex.request({"type": "upload", "name": "x.png"}, buffers)
    assert message in ex.error and ex.controls.image == before and ex.controls.example == 0


def test_edit_changes_the_answer_and_undo_restores_every_parameter(demo, explorer):
    original = fingerprint(demo)
    explorer.run()
    explorer.apply_edit("Paris", layer=0)  # queued behind the run
    assert explorer.wait(60) and not explorer.error
    c = explorer.controls
    assert c.edit_layer == 0  # suggested: the demo model retrieves the fact in layer 0's MLP
    assert c.answer["token"] == "Paris" and c.answer["edits"] == 1 and c.runs_done == 2
    assert c.edits == [
        {
            "question": "What is the capital of this country?",
            "new_answer": "Paris",
            "old_answer": "Brasilia",
            "layer": 0,
            "site": "mlp",
            "prob": pytest.approx(c.edits[0]["prob"]),
        }
    ]
    assert fingerprint(demo) != original
    explorer.undo()
    assert explorer.wait(60) and not explorer.error
    assert fingerprint(demo) == original
    assert c.answer["token"] == "Brasilia" and c.edits == [] and explorer.edits == [] and c.runs_done == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"type": "edit", "answer": "Brasilia", "layer": 2}, "already answers 'Brasilia'"),
        ({"type": "edit", "answer": "Zzyzx", "layer": 2}, "unknown to the tokenizer"),
        ({"type": "edit", "answer": "Paris", "layer": 99}, "Layer 99 is out of range (0 to 3)."),
        ({"type": "edit", "answer": "  ", "layer": 2}, "Type the new answer first."),
        ({"type": "edit", "answer": "x" * 81, "layer": 2}, "The new answer is too long: 81 characters, at most 80."),
        ({"type": "undo"}, "There is no edit to undo."),
    ],
)
def test_edit_errors_leave_the_weights_alone(demo, explorer, content, message):
    original = fingerprint(demo)
    explorer.request(content)
    assert explorer.wait(60)
    assert message in explorer.error and explorer.edits == [] and explorer.controls.status == "idle"
    assert fingerprint(demo) == original


@pytest.mark.parametrize(
    ("content", "buffers", "message"),
    [
        ([1, 2], None, "JSON object"),
        ("run", None, "JSON object"),
        ({"type": "explode"}, None, "Unknown request type 'explode' (known: select, upload,"),
        ({"type": "select", "index": 7}, None, "Index 7 is out of range"),
        ({"type": "select", "index": "0"}, None, "Index must be an integer"),
        ({"type": "select"}, None, "Index must be an integer"),
        ({"type": "question", "text": 3}, None, "The question must be text."),
        ({"type": "question", "text": "x" * 301}, None, "The question is too long: 301 characters, at most 300."),
        ({"type": "corruption", "value": "noise:Paris"}, None, "Unknown corruption"),
        ({"type": "run", "pad": "x" * 20_000}, None, "Oversized request"),
        ({"type": "run"}, [b"\0" * 8], "Unexpected binary buffers"),
        ({"type": "upload", "name": ["x"]}, [b"1"], "Name must be a string"),
    ],
)
def test_malformed_messages_show_an_error_and_the_widget_still_works(explorer, content, buffers, message):
    explorer.request(content, buffers)
    assert message in explorer.error and explorer.controls.status == "idle"
    run(explorer)
    assert explorer.controls.runs_done == 1 and explorer.controls.answer["token"] == "Brasilia"


def test_a_cancelled_run_keeps_its_partial_heatmap_and_shows_no_overlay(explorer, monkeypatch):
    trace_now = TraceHeatmap.trace_now

    def cancelled_at_once(heatmap):  # as if Cancel were pressed before the first batch finished
        heatmap.cancel()
        trace_now(heatmap)

    monkeypatch.setattr(TraceHeatmap, "trace_now", cancelled_at_once)
    run(explorer)
    assert explorer.heatmap.status == "cancelled" and explorer.overlay is None
    assert explorer.children == (explorer.controls, explorer.heatmap)
    assert explorer.controls.answer["token"] == "Brasilia" and explorer.controls.status == "idle"


def test_a_run_clicked_before_another_example_was_picked_is_not_shown(explorer):
    with MODEL_LOCK:  # holds the queued run until both requests are in
        explorer.run()
        explorer.select(2)
    assert explorer.wait(60) and not explorer.error
    c = explorer.controls
    assert explorer.children == (c,) and explorer.heatmap is None and c.answer == {} and c.runs_done == 0
    assert c.status == "idle" and c.question == "What currency is used in this country?"
    run(explorer)
    assert c.runs_done == 1 and c.answer["question"] == "What currency is used in this country?"


def test_an_ineffective_corruption_is_a_note_not_an_error(explorer):
    explorer.select(1)  # image noise leaves the demo model as sure of "no" as before
    run(explorer)
    notes = explorer.controls.notes
    assert any("says little about where the fact is stored" in note for note in notes)


def test_question_tokens_skip_leading_spaces_and_empty_offsets(demo):
    tokens = question_tokens(demo.tokenizer, "Is this country in Asia?")
    assert [(t["text"], t["start"], t["end"]) for t in tokens] == [
        ("Is", 0, 2),
        ("this", 3, 7),
        ("country", 8, 15),
        ("in", 16, 18),
        ("Asia", 19, 23),
        ("?", 23, 24),
    ]


def test_on_the_planted_model_trace_peaks_at_the_planted_layer_and_edits_flip_the_fact(planted):
    probes = [planted.probe("e0"), planted.probe("e1")]
    ex = Explorer(planted.model, probes, sites=("mlp", "hidden"), key_token="constraint", edit_options=PLANTED_EDIT)
    c = ex.controls
    assert c.examples == ["capital of e0", "capital of e1"]
    assert c.constraints == [{"text": "capital", "kind": "textual"}, {"text": "e0", "kind": "visual"}]
    ex.request({"type": "corruption", "value": "noise:e0"})
    run(ex)
    mlp = ex.heatmap.results["mlp"]
    assert mlp.peak()[0] == 2 and c.answer["token"] == c.answer["expected"] == planted.facts["e0"]
    assert isinstance(ex.overlay, PatchOverlay) and c.edit_layer == 2  # the overlay traced the image separately
    original = fingerprint(planted.model)
    new = next(a for a in sorted(set(planted.facts.values())) if a != planted.facts["e0"])
    ex.apply_edit(new)
    assert ex.wait(60) and not ex.error and c.answer["token"] == new
    ex.undo()
    assert ex.wait(60) and not ex.error and c.answer["token"] == planted.facts["e0"]
    assert fingerprint(planted.model) == original


def test_an_explorer_without_examples_waits_for_an_upload(planted):
    ex = Explorer(planted.model, [], sites=("hidden",))
    assert ex.controls.examples == [] and ex.controls.question == ""
    ex.run()
    assert "Pick an example or upload an image first." == ex.error
    ex.set_question("capital of e3")
    ex.mark([(2, 3, "visual")])
    assert not ex.error and ex.controls.constraints == [{"text": "e3", "kind": "visual"}]
    ex.upload(png(), "brown.png")
    assert not ex.error and ex.controls.constraints == [{"text": "e3", "kind": "visual"}]


def test_a_new_question_clears_the_last_answer_notes_and_figures_together(explorer):
    explorer.select(1)  # its run leaves a note (image noise leaves "no" as it was)
    run(explorer)
    c = explorer.controls
    assert c.answer and c.notes and explorer.heatmap is not None
    explorer.set_question(c.question)  # the same question again changes nothing
    assert c.answer and explorer.heatmap is not None
    first = explorer.heatmap
    explorer.set_question("Is this country in Asia?")
    assert c.answer == {} and c.notes == [] and explorer.heatmap is None and explorer.overlay is None
    assert explorer.children == (c,) and first.comm is None


def test_a_run_clicked_before_the_question_changed_is_not_shown(explorer):
    with MODEL_LOCK:
        explorer.run()
        explorer.set_question("What currency is used in this country?")
    assert explorer.wait(60) and not explorer.error
    assert explorer.heatmap is None and explorer.controls.answer == {} and explorer.controls.runs_done == 0


def test_a_run_whose_answer_was_shown_counts_even_if_the_question_then_changes(explorer, monkeypatch):
    """The answer (with its run number) is shown before the trace; a new question typed during the
    trace clears it, and the next run must not reuse that number."""
    trace_now = TraceHeatmap.trace_now

    def question_changes_meanwhile(heatmap):
        assert explorer.controls.answer["run"] == 1
        explorer.set_question("What currency is used in this country?")
        trace_now(heatmap)

    monkeypatch.setattr(TraceHeatmap, "trace_now", question_changes_meanwhile)
    explorer.run()
    assert explorer.wait(60) and not explorer.error
    assert explorer.controls.answer == {} and explorer.controls.runs_done == 1
    monkeypatch.setattr(TraceHeatmap, "trace_now", trace_now)
    run(explorer)
    assert explorer.controls.answer["run"] == 2 == explorer.controls.runs_done


@pytest.mark.parametrize(
    ("content", "buffers", "field", "message"),
    [
        ({"type": "question", "text": "x" * 301}, None, "question", "The question is too long"),
        ({"type": "question", "text": "  "}, None, "question", "Type the question first."),
        ({"type": "edit", "answer": "", "layer": 1}, None, "edit", "Type the new answer first."),
        ({"type": "edit", "answer": "Brasilia", "layer": 1}, None, "edit", "The model already answers 'Brasilia'"),
        ({"type": "upload", "name": "x.png"}, [b"not an image"], "upload", "Cannot read the uploaded file as an image"),
        ({"type": "marks", "spans": [{"start": 7, "end": 8, "kind": "textual"}]}, None, "marks", "Constraint '?'"),
        ({"type": "explode"}, None, "", "Unknown request type"),
    ],
)
def test_errors_are_plain_sentences_shown_next_to_their_control(explorer, content, buffers, field, message):
    explorer.request(content, buffers)
    assert explorer.wait(60)
    c = explorer.controls
    assert c.error.startswith(message) and c.error_field == field and c.error.endswith(".")
    assert not any(word in c.error for word in ("Error:", "object at 0x", "got ''", "non-empty string"))
    assert c.error_details and "object at 0x" not in c.error_details
    explorer.set_question("What is the capital of this country?")  # the next good request clears all three
    assert (c.error, c.error_field, c.error_details) == ("", "", "")


def test_a_refused_question_says_the_chips_still_show_the_previous_one(explorer):
    before = list(explorer.controls.tokens)
    explorer.set_question("x" * 301)
    c = explorer.controls
    assert c.error == (
        "The question is too long: 301 characters, at most 300. The tokens below still show the previous question."
    )
    assert c.tokens == before and c.question == "What is the capital of this country?"


def test_an_upload_error_keeps_the_image_readers_words_in_details(explorer):
    explorer.upload(b"not an image", "notes.png")
    c = explorer.controls
    assert c.error == "Cannot read the uploaded file as an image (PNG, JPEG, GIF, WebP, ...)."
    assert c.error_details.startswith("PIL UnidentifiedImageError: cannot identify image file (in memory)")


def test_a_run_that_fails_in_the_worker_is_shown_beside_run(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explorer, "_session", broken)
    explorer.run()
    assert explorer.wait(60)
    c = explorer.controls
    assert c.error == "The run failed unexpectedly; the details below say where."
    assert c.error_field == "run" and "RuntimeError: out of memory" in c.error_details and c.status == "idle"
