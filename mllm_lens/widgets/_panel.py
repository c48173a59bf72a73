"""The Explorer's control panel: its synced state, and how runs and edits are summarised in it."""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets as t

from mllm_lens.editing import Edit
from mllm_lens.tracing.session import TraceSession
from mllm_lens.widgets._base import bundle

MAX_UPLOAD_BYTES = 8 * 2**20
IMAGE = "image"  # corruption value: noise on every visual token; "noise:<phrase>" noises that phrase


class ExplorerControls(anywidget.AnyWidget):
    """State for the browser (``js/src/explorer.js``), written by the kernel only: the browser
    sends requests (see :class:`~mllm_lens.widgets.Explorer`) and renders what comes back."""

    _esm = bundle()
    _widget = t.Unicode("explorer").tag(sync=True)
    examples = t.List(t.Unicode()).tag(sync=True)  # labels of the pickable examples
    example = t.Int(-1).tag(sync=True)  # picked example, -1 for an upload
    source = t.Unicode("").tag(sync=True)
    image = t.Bytes(b"").tag(sync=True)  # PNG preview
    question = t.Unicode("").tag(sync=True)
    tokens: t.List[Any] = t.List().tag(sync=True)  # [{"text", "start", "end"}] chips
    marks: t.List[Any] = t.List().tag(sync=True)  # [{"start", "end", "kind"}] token spans, end exclusive
    constraints: t.List[Any] = t.List().tag(sync=True)  # [{"text", "kind"}]
    corruptions: t.List[Any] = t.List().tag(sync=True)  # [{"value", "label"}]
    corruption = t.Unicode(IMAGE).tag(sync=True)
    answer = t.Dict().tag(sync=True)  # the last run: see answer_state
    notes = t.List(t.Unicode()).tag(sync=True)  # warnings of the last run or edit
    num_layers = t.Int(1).tag(sync=True)
    edit_layer = t.Int(0).tag(sync=True)  # suggested layer (causal_layer of the last run's probe)
    key_token = t.Unicode("constraint").tag(sync=True)
    edits: t.List[Any] = t.List().tag(sync=True)  # active edits, oldest first: see edit_state
    upload_limit = t.Int(MAX_UPLOAD_BYTES).tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)
    error = t.Unicode("").tag(sync=True)  # a plain sentence (see mllm_lens.widgets._errors)
    error_details = t.Unicode("").tag(sync=True)  # the Python exception behind it
    error_field = t.Unicode("").tag(sync=True)  # the control it is shown next to ("" = the panel's top)
    runs_done = t.Int(0).tag(sync=True)


def corruption_label(value: str) -> str:
    """How the panel names a corruption value."""
    return "image noise (all visual tokens)" if value == IMAGE else f"noise on {value.removeprefix('noise:')!r}"


def answer_state(session: TraceSession, corruption: str, expected: str | None, edits: int, run: int) -> dict:
    """The model's answer (the traced top-1 token) with p(answer) clean and corrupted, top 3."""
    tokenizer = session.model.tokenizer
    top = session.clean_probs.float().topk(3)
    top_tokens = tokenizer.convert_ids_to_tokens(top.indices.tolist())
    return {
        "token": tokenizer.convert_ids_to_tokens(session.target),
        "clean_prob": session.clean_prob,
        "corrupted_prob": session.corrupted_prob,
        "corruption": corruption_label(corruption),
        "expected": expected,
        "question": session.encoded.probe.question,
        "top": [[token, prob] for token, prob in zip(top_tokens, top.values.tolist(), strict=True)],
        "edits": edits,
        "run": run,
    }


def edit_state(handle: Edit) -> dict:
    """One active edit as the panel lists it."""
    request = handle.requests[0]
    return {
        "question": request.probe.question,
        "new_answer": request.new_answer,
        "old_answer": handle.info.get("old_answers", [""])[0],
        "layer": handle.layers[0],
        "site": handle.site,
        "prob": float(handle.info["delta_prob"][0]) if "delta_prob" in handle.info else None,  # MultEdit's p(new)
    }
