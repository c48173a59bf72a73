"""Widget state, binary arrays, browser messages and the worker thread, without a browser."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from ipywidgets.widgets.widget import _remove_buffers
from PIL import Image

import mllm_lens as ml
from mllm_lens.errors import EditError
from mllm_lens.widgets import MAX_PENDING, PatchOverlay, TraceHeatmap, patch_curve
from mllm_lens.widgets._base import MessageError
from mllm_lens.widgets._codec import array_from_json, array_to_json
from mllm_lens.widgets._errors import shown
from mllm_lens.widgets._heatmap import window_refusal
from mllm_lens.widgets._overlay import describe_corruption


@pytest.fixture(scope="module")
def session(planted):
    return ml.TraceSession(planted.model, planted.probe("e0"), ml.noise("e0"))


@pytest.fixture(scope="module")
def results(session):
    return [session.trace(site, progress=False) for site in session.sites]


class SlowSession:
    """Stands in for a TraceSession whose cells wait for the test to release them."""

    def __init__(self, session):
        self.inner, self.release, self.calls = session, threading.Event(), []
        self.sites = session.sites

    def cell(self, site, layer, position, *args, **kwargs):
        self.calls.append((site, layer, position))
        assert self.release.wait(10)
        if position == 0:
            raise RuntimeError("boom")
        return self.inner.cell(site, layer, position, *args, **kwargs)


def click(widget, **content):
    widget._on_message(widget, {"type": "cell", **content}, [])


def test_array_codec_round_trip_is_binary_float32():
    array = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    array[0, 1, 2] = np.nan
    payload = array_to_json(array)
    assert isinstance(payload["view"], memoryview) and payload["dtype"] == "float32" and payload["shape"] == [2, 3, 4]
    assert payload["view"].nbytes == 24 * 4
    back = array_from_json({**payload, "view": payload["view"].tobytes()})
    np.testing.assert_array_equal(back, array.astype(np.float32))
    assert array_to_json(None) is None and array_from_json(None) is None


def test_heatmap_state_sends_scores_as_a_buffer(results):
    hm = TraceHeatmap(results)
    assert [p["site"] for p in hm.panels] == ["hidden", "mlp", "attn"]
    assert hm.scores.shape == (3, 5, 20) and hm.scores.dtype == np.float32
    assert hm.labels == results[0].labels and hm.image_span == [1, 17] and hm.patch_grid == [4, 4]
    _state, paths, buffers = _remove_buffers(hm.get_state())
    assert ["scores", "view"] in paths
    np.testing.assert_array_equal(
        np.frombuffer(buffers[paths.index(["scores", "view"])], np.float32).reshape(3, 5, 20), hm.scores
    )


def test_heatmap_names_question_corruption_and_marked_tokens(session, results):
    """The title's question and corruption, and the token axis's marks, with or without a run."""
    for hm in (TraceHeatmap(results), TraceHeatmap(session)):
        assert hm.question == session.encoded.probe.question and hm.corruption == "noise on 'e0'"
        (c0, c1), (e0, e1) = session.encoded.spans["capital"], session.encoded.spans["e0"]
        assert hm.spans == [
            {"start": c0, "end": c1, "kind": "textual", "text": "capital", "corrupted": False},
            {"start": e0, "end": e1, "kind": "visual", "text": "e0", "corrupted": True},
            {"start": 1, "end": 17, "kind": "image", "text": "image", "corrupted": False},
        ]
    image = ml.TraceSession(session.model, session.encoded.probe, ml.image_noise(), sites=("hidden",))
    assert [s["corrupted"] for s in TraceHeatmap(image).spans] == [False, False, True]


def test_a_re_run_starts_from_blank_cells(session, results):
    """A re-run (e.g. another window) fills in live from NaN, never over the old trace's colours;
    a window that fits withdraws an earlier refusal."""
    hm = TraceHeatmap(results, session=session)
    seen = []
    hm.observe(lambda change: seen.append(np.array(change["new"])), "scores")
    hm._on_message(hm, {"type": "trace", "window": 9}, [])
    assert hm.window_error and not seen
    hm._on_message(hm, {"type": "trace", "window": 2}, [])  # paper convention: 5 layers, the whole planted model
    assert hm.wait(120) and not hm.error and not hm.window_error and hm.window == 2
    assert np.isnan(seen[0]).any() and not np.isnan(hm.scores).any()
    np.testing.assert_allclose(hm.scores[1], session.trace("mlp", 2, progress=False).scores, atol=1e-6)


def test_a_new_window_clears_the_result_of_a_click_at_the_old_one(session, results):
    """The result panel answered a click at the old window: a re-trace at another window clears it
    together with the window (the page resets its readout on the same change)."""
    hm = TraceHeatmap(results, session=session)
    click(hm, panel=1, layer=2, position=19)
    assert hm.wait(30) and hm.cell_result["position"] == 19
    hm.run(window=1)  # the same window: the result still holds
    assert hm.wait(120) and hm.cell_result["position"] == 19
    hm._on_message(hm, {"type": "trace", "window": 2}, [])
    assert hm.wait(120) and hm.window == 2 and hm.cell_result == {} and not hm.error


def test_a_window_that_does_not_fit_is_refused_next_to_its_input(session, results):
    """Plain words in ``window_error`` (shown beside the window input, not at the top), the
    engine's exception under details; nothing is traced and the traced window stays."""
    hm = TraceHeatmap(results, session=session)
    cases = [
        (9, "Window 9 restores 19 layers, more than this model's 5: choose 1 to 2."),
        (1.5, "The window must be a whole number from 1 to 2 (the model has 5 layers)."),
        (None, "The window must be a whole number from 1 to 2 (the model has 5 layers)."),
    ]
    for window, words in cases:
        hm._on_message(hm, {"type": "trace", "window": window}, [])
        assert hm.window_error == words and hm.window_error_details.startswith("TraceConfigError: window")
        assert hm.window == 1 and hm.status == "idle" and not hm.error
    with pytest.raises(ml.TraceConfigError, match="larger than the model's 5 layers"):
        hm.run(window=9)  # from Python the engine's exception is raised


@pytest.mark.parametrize(
    ("window", "mode", "layers", "words"),
    [
        (6, "rome", 5, "Window 6 restores 6 layers, more than this model's 5: choose 1 to 5."),
        (2, "paper", 2, "Window 2 restores 5 layers, more than this model's 2: choose 1."),
        (0, "paper", 2, "The window must be 1 (the model has 2 layers)."),
        (0, "rome", 4, "The window must be a whole number from 1 to 4 (the model has 4 layers)."),
    ],
)
def test_window_refusals_name_the_windows_that_fit(window, mode, layers, words):
    assert window_refusal(window, mode, layers) == words


def test_the_site_control_shows_finished_sites_at_once(results):
    """Without a session: the held traces are the choices; one site or all, from the data."""
    hm = TraceHeatmap(results)
    assert hm.site_options == [
        {"site": "hidden", "title": "hidden state"},
        {"site": "mlp", "title": "MLP"},
        {"site": "attn", "title": "attention"},
    ]
    hm.cell_result = {"site": "hidden", "run": 1}
    hm._on_message(hm, {"type": "site", "site": "mlp"}, [])
    assert hm.wait(10) and not hm.error and hm.panels == [{"site": "mlp", "title": "MLP"}]
    np.testing.assert_allclose(hm.scores, results[1].scores[None], atol=1e-6)
    assert hm.cell_result == {}  # it answered a click on the other panels
    hm.show_site("all")
    assert hm.wait(10) and [p["site"] for p in hm.panels] == ["hidden", "mlp", "attn"] and hm.scores.shape[0] == 3
    hm._on_message(hm, {"type": "site", "site": "resid"}, [])
    assert (
        hm.error == "This heatmap cannot show the site 'resid'." and hm.error_details == "its sites: hidden, mlp, attn"
    )
    assert TraceHeatmap(results[1]).site_options == []  # one trace, no session: nothing to switch


def test_the_site_control_traces_a_site_not_traced_at_this_window(session, results, monkeypatch):
    """With a session every site it prepared is offered; one without a finished trace at the
    current window is traced live in the kernel (as a window change is)."""
    hm = TraceHeatmap(results[1], session=session)  # MLP only
    assert [o["site"] for o in hm.site_options] == ["hidden", "mlp", "attn"]
    traced, trace = [], session.trace
    monkeypatch.setattr(session, "trace", lambda site, *a, **k: traced.append(site) or trace(site, *a, **k))
    hm._on_message(hm, {"type": "site", "site": "attn"}, [])
    assert hm.wait(120) and not hm.error and traced == ["attn"] and hm.panels[0]["site"] == "attn"
    np.testing.assert_allclose(hm.scores[0], results[2].scores, atol=1e-6)
    hm.show_site("mlp")  # finished at this window: shown without a trace
    assert hm.wait(10) and traced == ["attn"] and hm.panels[0]["site"] == "mlp"
    hm.window = 2  # the held MLP trace is of window 1 now
    hm.show_site("mlp")
    assert hm.wait(120) and traced == ["attn", "mlp"] and hm.results["mlp"].settings["window"] == 2


def test_live_trace_fills_every_cell_like_session_trace(session, results):
    hm = TraceHeatmap(session)
    assert np.isnan(hm.scores).all()
    hm.run()
    assert hm.wait(60) and hm.status == "idle" and hm.progress == 1.0 and not hm.error
    np.testing.assert_allclose(hm.scores, np.stack([r.scores for r in results]), atol=1e-6)
    assert set(hm.results) == {"hidden", "mlp", "attn"}


def test_cancel_stops_a_trace_after_its_current_batch(planted, monkeypatch):
    session = ml.TraceSession(planted.model, planted.probe("e0"), ml.noise("e0"), sites=("mlp",), batch_size=3)
    hm = TraceHeatmap(session)
    forward = session.executor._suffix_logits
    batches = []

    def press_cancel_during_the_second_batch(suffix, *rest):
        batches.append(len(suffix))
        if len(batches) == 2:
            hm._on_message(hm, {"type": "cancel"}, [])  # what the Cancel button sends, mid-trace
        return forward(suffix, *rest)

    monkeypatch.setattr(session.executor, "_suffix_logits", press_cancel_during_the_second_batch)
    hm.run()
    assert hm.wait(60) and hm.status == "cancelled"
    assert len(batches) == 2  # the batch that was running finished; no further batch started
    filled = int(np.isfinite(hm.scores).sum())
    assert filled == 3  # the first batch's cells (its second was not yet sent to the page)
    full = session.trace("mlp", progress=False).scores
    assert np.isfinite(full).sum() > filled


def test_cell_click_runs_the_restoration(session, results):
    hm = TraceHeatmap(results, session=session)
    click(hm, panel=1, layer=2, position=19)
    assert hm.wait(30)
    expected = session.cell("mlp", 2, 19)
    assert hm.clicks_done == 1 and hm.status == "idle" and not hm.error
    assert hm.cell_result["site"] == "mlp" and hm.cell_result["position"] == 19 and hm.cell_result["run"] == 1
    assert hm.cell_result["restored_prob"] == pytest.approx(expected.restored_prob, abs=1e-6)
    assert hm.cell_result["restored_top"][0][0] == expected.restored_top[0][0]
    assert hm.outcomes[-1].layer == 2


@pytest.mark.parametrize(
    ("content", "buffers", "message"),
    [
        ([1, 2], [], "JSON object"),
        ({"type": "explode"}, [], "Unknown request type"),
        ({"type": "cell", "panel": 0, "layer": 1}, [], "Position must be an integer"),
        ({"type": "cell", "panel": 0, "layer": True, "position": 3}, [], "Layer must be an integer"),
        ({"type": "cell", "panel": 0, "layer": 1.5, "position": 3}, [], "Layer must be an integer"),
        ({"type": "cell", "panel": 3, "layer": 0, "position": 3}, [], "Panel 3 is out of range (0 to 2)"),
        ({"type": "cell", "panel": 0, "layer": 5, "position": 3}, [], "Layer 5 is out of range (0 to 4)"),
        ({"type": "cell", "panel": 0, "layer": 0, "position": -1}, [], "Position -1 is out of range"),
        ({"type": "cell", "panel": 0, "layer": 0, "position": 99}, [], "Position 99 is out of range (0 to 19)"),
        ({"type": "cell", "pad": "x" * 20_000}, [], "Oversized request"),
        ({"type": "cell", "panel": 0, "layer": 0, "position": 3}, [b"\0" * 8], "Unexpected binary buffers"),
    ],
)
def test_bad_messages_set_error_and_never_raise(session, results, content, buffers, message):
    hm = TraceHeatmap(results, session=session)
    hm._on_message(hm, content, buffers)
    assert message in hm.error
    assert hm.wait(5) and hm.clicks_done == 0 and hm.status == "idle"


def test_click_without_a_session_explains_itself(results):
    hm = TraceHeatmap(results[1])
    click(hm, panel=0, layer=1, position=19)
    assert "no TraceSession" in hm.error and hm.clicks_done == 0


def test_second_click_is_queued_and_both_run_in_order(session, results):
    slow = SlowSession(session)
    hm = TraceHeatmap(results, session=slow)
    click(hm, panel=1, layer=1, position=19)
    click(hm, panel=2, layer=3, position=18)
    assert hm.status == "running" and hm._worker.pending == 2 and hm.clicks_done == 0
    slow.release.set()
    assert hm.wait(30)
    assert slow.calls == [("mlp", 1, 19), ("attn", 3, 18)]
    assert hm.clicks_done == 2 and hm.cell_result["site"] == "attn" and hm.cell_result["run"] == 2
    assert hm.status == "idle" and not hm.error


def test_queue_overflow_is_refused_and_a_failing_job_leaves_the_worker_alive(session, results):
    slow = SlowSession(session)
    hm = TraceHeatmap(results, session=slow)
    click(hm, panel=0, layer=0, position=0)  # raises in the worker once released
    while not slow.calls:  # the first job is running, so the queue is empty again
        threading.Event().wait(0.005)
    for _ in range(MAX_PENDING):
        click(hm, panel=1, layer=2, position=19)
    click(hm, panel=1, layer=2, position=19)
    assert hm.error.startswith("Busy: 8 requests are already waiting")
    slow.release.set()
    assert hm.wait(60)
    assert hm.error == "Re-running the restoration failed unexpectedly; the details below say where."
    assert "RuntimeError: boom" in hm.error_details and "Traceback" in hm.error_details
    assert hm.clicks_done == MAX_PENDING and hm.status == "idle"


def test_jobs_of_different_widgets_never_overlap(session, results):
    first, second = SlowSession(session), SlowSession(session)
    a, b = TraceHeatmap(results, session=first), TraceHeatmap(results, session=second)
    click(a, panel=1, layer=1, position=19)
    click(b, panel=1, layer=1, position=19)
    while not first.calls and not second.calls:
        threading.Event().wait(0.005)
    threading.Event().wait(0.2)
    assert len(first.calls) + len(second.calls) == 1  # the other job waits for the shared lock
    first.release.set()
    second.release.set()
    assert a.wait(30) and b.wait(30) and a.clicks_done == b.clicks_done == 1


def test_overlay_patch_click_returns_a_layer_curve(planted, session):
    calls = []

    def on_patch(patches):
        calls.append(patches)
        return np.linspace(0, 1, 5)

    image = session.encoded.probe.image
    ov = PatchOverlay(image, np.random.default_rng(0).random((5, 4, 4)), on_patch, title="t")
    assert ov.image.startswith(b"\x89PNG") and ov.values.dtype == np.float32
    ov._on_message(ov, {"type": "patches", "patches": [[0, 1], [3, 3]]}, [])
    assert ov.wait(10) and not ov.error
    assert calls == [[(0, 1), (3, 3)]] and ov.clicks_done == 1 and ov.selected == [[0, 1], [3, 3]]
    np.testing.assert_allclose(ov.curve, np.linspace(0, 1, 5), rtol=1e-6)
    assert "2 patches (0,1) (3,3)" == ov.curve_label


@pytest.mark.parametrize(
    ("patches", "message"),
    [([], "non-empty list"), ([[0, 4]], "Col 4 is out of range"), ([[0]], "[row, col]"), ([[0, 0]] * 17, "at most 16")],
)
def test_overlay_rejects_bad_patches(session, patches, message):
    ov = PatchOverlay(session.encoded.probe.image, np.zeros((5, 4, 4)), lambda p: np.zeros(5))
    ov._on_message(ov, {"type": "patches", "patches": patches}, [])
    assert message in ov.error and ov.clicks_done == 0


def test_overlay_click_without_a_callback_selects_and_promises_no_run(session):
    ov = PatchOverlay(session.encoded.probe.image, np.zeros((5, 4, 4)))
    assert not ov.clickable
    ov.request([(1, 2)])
    assert ov.wait(5) and ov.selected == [[1, 2]]
    assert not ov.error and ov.status == "idle" and ov.clicks_done == 0
    ov.on_patch = lambda patches: np.zeros(5)
    assert ov.clickable
    ov.request([(0, 0)])
    assert ov.wait(5) and ov.clicks_done == 1 and not ov.error


def test_overlay_from_a_trace_anchors_its_scale_on_the_trace(results):
    ov = PatchOverlay.from_trace(results[0], Image.new("RGB", (8, 8)))
    assert ov.scale == "anchored" and ov.value_label == "indirect effect of restoring the patch's hidden state"
    assert ov.clean_prob == pytest.approx(results[0].clean_prob)
    assert ov.corrupted_prob == pytest.approx(results[0].corrupted_prob)


def test_overlay_from_a_trace_names_its_corruption_and_the_curve_target(results):
    ov = PatchOverlay.from_trace(results[0], Image.new("RGB", (8, 8)))
    assert ov.corruption == "noise on 'e0'"  # the session's constraint noise, in words
    assert ov.target_token == results[0].target_token != ""
    assert "value" not in ov.value_label and ov.title == "hidden state indirect effect per patch"
    assert PatchOverlay.from_trace(results[0], Image.new("RGB", (8, 8)), corruption="x").corruption == "x"


def test_overlay_from_a_sweep_anchors_its_scale_on_the_sweep(planted, session):
    """Notebook 05's overlay of a patch sweep: anchored on the sweep's clean and corrupted p (given
    the effect alone, the scale ran from 0 to its largest value, so 0.021 was painted full yellow)."""
    sweep = ml.patch_sweep(planted.model, planted.probe("e0"))
    image = session.encoded.probe.image
    ov = PatchOverlay.from_sweep(sweep, image)
    assert ov.scale == "anchored" and ov.clean_prob == pytest.approx(sweep.clean_prob)
    assert ov.corrupted_prob == pytest.approx(sweep.corrupted_prob)
    np.testing.assert_allclose(ov.values, sweep.effect, atol=1e-6)
    assert ov.value_label == "indirect effect of restoring the patch's hidden state"
    assert ov.corruption == "image noise on all visual tokens" and ov.target_token == sweep.target_token
    with pytest.raises(ValueError, match="restore-mode"):
        PatchOverlay.from_sweep(ml.patch_sweep(planted.model, planted.probe("e0"), mode="corrupt"), image)


@pytest.mark.parametrize(
    ("described", "words"),
    [
        ({"kind": "image_noise", "patches": None, "scale": 3.0, "seed": 0}, "image noise on all visual tokens"),
        ({"kind": "image_noise", "patches": [[0, 1], 3]}, "image noise on 2 patches"),
        ({"kind": "constraint_noise", "constraint": "this country"}, "noise on 'this country'"),
        ({"kind": "replace", "constraint": "red", "by": "blue"}, "'red' replaced by 'blue'"),
        (None, ""),
    ],
)
def test_corruptions_are_described_in_words(described, words):
    assert describe_corruption(described) == words


def test_heatmap_is_clickable_only_with_a_session(session, results):
    assert not TraceHeatmap(results).clickable
    assert TraceHeatmap(results, session=session).clickable
    assert TraceHeatmap(session).clickable and TraceHeatmap(session).scale == "anchored"


def test_a_failing_patch_callback_is_a_sentence_with_the_traceback_in_details(session):
    def on_patch(patches):
        raise KeyError("lost")

    ov = PatchOverlay(session.encoded.probe.image, np.zeros((5, 4, 4)), on_patch)
    ov.request([(0, 0)])
    assert ov.wait(5) and ov.status == "idle"
    assert ov.error == "Computing the patch curve failed unexpectedly; the details below say where."
    assert "KeyError: 'lost'" in ov.error_details and "on_patch" in ov.error_details


def test_overlay_with_the_patch_curve_callback_restores_visual_tokens(planted, results):
    image_session = ml.TraceSession(planted.model, planted.probe("e0"), ml.image_noise(), sites=("hidden",))
    ov = PatchOverlay.from_trace(results[0], image_session.encoded.probe.image, patch_curve(image_session))
    assert ov.values.shape == (5, 4, 4)
    ov.request([(1, 2)])
    assert ov.wait(30) and not ov.error and ov.curve.shape == (5,)
    expected = image_session.trace("hidden", positions=[1 + 4 + 2], progress=False).scores[:, 7]
    np.testing.assert_allclose(ov.curve, expected, atol=1e-6)
    ov.request([(1, 2), (2, 2)])  # a dragged box: its patches restored together
    assert ov.wait(30) and not ov.error
    np.testing.assert_allclose(ov.curve, image_session.region_curve("hidden", [7, 11]), atol=1e-6)


def test_link_outlines_picked_patches_and_selects_clicked_image_cells(session, results):
    hm = TraceHeatmap(results, session=session)
    ov = PatchOverlay.from_trace(results[0], session.encoded.probe.image)
    hm.link(ov)
    ov.selected = [[0, 0], [1, 1]]
    assert hm.highlight == [1, 6] and not hm.expanded  # outlined in the band: a pick never moves the layout
    click(hm, panel=0, layer=3, position=2)  # <img 0,1>
    assert hm.wait(30) and ov.selected == [[0, 1]] and ov.layer == 3


class RecordingComm:
    """Stands in for a widget's comm to the page: records the traits each message carries."""

    kernel = True

    def __init__(self) -> None:
        self.comm_id, self.sent = uuid.uuid4().hex, []

    def on_msg(self, callback) -> None:
        pass

    def send(self, data=None, buffers=None) -> None:
        self.sent.append(sorted(data["state"]))

    def close(self, *args, **kwargs) -> None:
        pass


def test_a_click_is_answered_in_one_message_and_its_result_in_one_more(session, results):
    """Each message is a trip through the Jupyter server and the page (benchmarks/RESULTS.md)."""
    hm = TraceHeatmap(results, session=session)
    ov = PatchOverlay.from_trace(results[0], session.encoded.probe.image, lambda patches: np.zeros(5))
    hm.link(ov)
    hm.comm, ov.comm = RecordingComm(), RecordingComm()
    click(hm, panel=0, layer=3, position=2)  # <img 0,1>: the linked overlay shows its patch and layer
    assert hm.wait(30)
    ov.request([(1, 2)])
    assert ov.wait(30) and not hm.error and not ov.error
    result = ["cell_result", "clicks_done", "status"]
    assert hm.comm.sent == [["status"], ["highlight"], result, ["highlight"]]  # highlight: the overlay's pick
    assert ov.comm.sent == [
        ["layer", "selected"],
        ["selected", "status"],
        ["clicks_done", "curve", "curve_label", "status"],
    ]


def test_trace_result_show_returns_a_heatmap(results):
    assert isinstance(results[1].show(), TraceHeatmap)


def test_the_engine_imports_no_widget_stack():
    code = (
        "import sys, mllm_lens, mllm_lens.export, mllm_lens.results\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('anywidget', 'bokeh', 'ipywidgets', 'jupyter_bokeh')"
        " or m.startswith('mllm_lens.widgets')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("err", "message", "details"),
    [
        (EditError("the model already answers 'Paris'"), "The model already answers 'Paris'.", "EditError: "),
        (MessageError("the file is empty", "size 0"), "The file is empty.", "size 0"),
        (OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d0>"), "The upload failed", "(in memory)"),
    ],
)
def test_errors_read_as_sentences_without_python_in_the_message(err, message, details):
    out = shown(err, "The upload")
    assert out.message.startswith(message) and details in out.details
    assert "Error:" not in out.message and "object at 0x" not in out.message + out.details


def test_a_long_engine_message_shows_its_first_sentence_and_keeps_the_rest_in_details():
    err = ml.ProbeError("constraint '?' is not in the question 'Why'. Tokenized prompt: " + " ".join(["0:'<s>'"] * 40))
    out = shown(err, "Marking")
    assert out.message == "Constraint '?' is not in the question 'Why'."
    assert out.details.startswith("ProbeError: constraint") and "Tokenized prompt" in out.details


def test_download_buttons_get_svg_and_html_from_the_kernel(session, results):
    """The SVG / HTML buttons ask the kernel, which sends the file's bytes back; a heatmap whose
    trace has not finished says so in words."""
    hm = TraceHeatmap(results, session=session)
    sent = []
    hm.send = lambda content, buffers=None: sent.append((content, buffers))
    hm._on_message(hm, {"type": "export", "format": "svg"}, [])
    hm._on_message(hm, {"type": "export", "format": "html"}, [])
    assert [c for c, _ in sent] == [
        {"type": "download", "name": "trace.svg", "mime": "image/svg+xml"},
        {"type": "download", "name": "trace.html", "mime": "text/html"},
    ]
    assert sent[0][1][0].startswith(b"<svg") and b"mllmLensWidgets" in sent[1][1][0] and not hm.error
    empty = TraceHeatmap(session)
    empty._on_message(empty, {"type": "export", "format": "svg"}, [])
    assert empty.error == "There is no finished trace to download yet: run it first."
    assert hm.downloads == ["png", "svg", "html"]
    hm.value = "normalized"  # the download paints what the page shows
    hm._on_message(hm, {"type": "export", "format": "svg"}, [])
    assert b">normalised effect</text>" in sent[-1][1][0] and not hm.error
