"""Explorer: pick or upload a visual question, mark its constraints, trace it, edit the model.

The Explorer is an ``ipywidgets.VBox``: a control panel (:class:`ExplorerControls`, front end
``js/src/explorer.js``) above the :class:`TraceHeatmap` and :class:`PatchOverlay` of the last
run, which every run replaces. The panel's traits are written by the kernel only; the browser
sends requests, each validated here (see ``mllm_lens.widgets._base``):

* ``select {index}`` / ``upload {name, question}`` + one binary buffer (the file's bytes, at
  most ``max_upload_bytes``) / ``question {text}``: what to ask about which image;
* ``marks {spans: [{start, end, kind}]}``: constraint token spans, turned into phrases and
  checked by building and encoding the :class:`~mllm_lens.Probe`;
* ``corruption {value}``: ``"image"`` (noise on every visual token; the default with a visual
  constraint, since a small model may read the image at the answer position and ignore the
  constraint's words) or ``"noise:<phrase>"`` (noise on that constraint's embeddings);
* ``run``, ``edit {answer, layer}``, ``undo`` (the heatmap's own Cancel button stops a run).

A refused request or a failed job is shown next to the control that sent it (``error`` worded
for people, ``error_details`` the Python text, ``error_field`` the control: see
:data:`FIELDS`). Typing a new question clears the last run's answer, warnings and figures.

Picking, marking and uploading are answered at once (no forward pass). Runs, edits and undos
go to the worker thread, queued in click order, each with the probe as it was when clicked (a
run whose example was replaced before it finished is not shown). An edit (MultEdit on an MLP,
:func:`mllm_lens.edit`) and an undo (bit-identical) are each followed by a fresh trace, so the
panel shows the new answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets
from PIL import Image

from mllm_lens.editing import Edit, causal_layer, edit
from mllm_lens.errors import MllmLensError
from mllm_lens.models.adapters import SITES
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Constraint, Probe
from mllm_lens.tracing import image_noise, noise
from mllm_lens.tracing.session import TraceSession
from mllm_lens.widgets import _examples as ex
from mllm_lens.widgets._base import MessageError, Worker, binary_payload, index, parse_message, text
from mllm_lens.widgets._errors import shown
from mllm_lens.widgets._heatmap import TraceHeatmap
from mllm_lens.widgets._overlay import PatchOverlay, describe_corruption, patch_curve, png_bytes
from mllm_lens.widgets._panel import (
    IMAGE,
    MAX_UPLOAD_BYTES,
    ExplorerControls,
    answer_state,
    corruption_label,
    edit_state,
)

MAX_QUESTION_CHARS = 300
MAX_ANSWER_CHARS = 80
STALE_CHIPS = "The tokens below still show the previous question."
REQUESTS = ("select", "upload", "question", "marks", "corruption", "run", "edit", "undo")
# request -> (the control its errors are shown next to, what the page calls it)
FIELDS = {
    "select": ("upload", "Loading the example"),
    "upload": ("upload", "Reading the upload"),
    "question": ("question", "Reading the question"),
    "marks": ("marks", "Marking the constraint"),
    "corruption": ("run", "Choosing the corruption"),
    "run": ("run", "The run"),
    "edit": ("edit", "The edit"),
    "undo": ("edit", "Undoing the edit"),
}
PREVIEW_SIDE = 160


@dataclass(frozen=True)
class _Job:
    """What a queued run, edit or undo works on: the panel's state when it was clicked."""

    probe: Probe
    corruption: str
    expected: str | None
    source: int  # which picked or uploaded image, or typed question, it was clicked on (see Explorer._sources)


class Explorer(ipywidgets.VBox):
    """Pick an example (or upload an image and type a question), mark constraints, run, edit.

    ``examples``: :class:`~mllm_lens.data.VQARecord` s (e.g. ``load_vqa_constraints(...)``) or
    :class:`~mllm_lens.Probe` s; default: a few demo-world flag questions. ``sites``: the
    heatmap's panels. ``key_token``: where MultEdit reads its key (``"constraint"``, the paper's:
    the last token of the visual constraint; ``"last"``: the prompt's last token);
    ``edit_options``: further keywords of :func:`mllm_lens.edit` (``lr``, ``steps``, ...). The
    methods below do what the panel's controls do, from Python.
    """

    def __init__(
        self,
        model: LensModel,
        examples: Iterable[Any] | None = None,
        *,
        sites: Sequence[str] = SITES,
        key_token: str = "constraint",
        edit_options: dict | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        **kwargs: Any,
    ) -> None:
        self.examples = ex.default_examples() if examples is None else [ex.as_example(e) for e in examples]
        self.controls = ExplorerControls(
            examples=[e.label for e in self.examples],
            num_layers=model.num_layers,
            key_token=key_token,
            upload_limit=max_upload_bytes,
        )
        super().__init__([self.controls], **kwargs)
        self.model, self.sites, self.key_token = model, tuple(sites), key_token
        self.max_upload_bytes, self.edit_options = max_upload_bytes, dict(edit_options or {})
        self.heatmap: TraceHeatmap | None = None
        self.overlay: PatchOverlay | None = None
        self.session: TraceSession | None = None
        self.edits: list[Edit] = []  # applied, oldest first; Undo removes the last
        self.errors: list[BaseException] = []
        self._image: Image.Image | None = None
        self._template: str | None = None
        self._expected: str | None = None
        self._constraints: list[Constraint] = []
        self._sources = 0  # examples picked, images uploaded, questions typed: runs clicked before are not shown
        self._worker = Worker(lambda err, kind: self._fail(err, kind, in_worker=True))
        self.controls.on_msg(self._on_message)
        if self.examples:
            self.select(0)

    # -- what the controls do, from Python --------------------------------------------------------
    def select(self, example: int) -> None:
        self.request({"type": "select", "index": example})

    def set_question(self, question: str) -> None:
        self.request({"type": "question", "text": question})

    def mark(self, spans: Sequence[tuple[int, int, str]]) -> None:
        """Mark token spans ``(start, end, kind)`` (end exclusive) as the constraints."""
        self.request({"type": "marks", "spans": [{"start": s, "end": e, "kind": k} for s, e, k in spans]})

    def upload(self, data: bytes, name: str = "upload", question: str | None = None) -> None:
        self.request({"type": "upload", "name": name, "question": question}, [data])

    def run(self) -> None:
        self.request({"type": "run"})

    def apply_edit(self, answer: str, layer: int | None = None) -> None:
        """Edit the model so the current question is answered ``answer`` (default layer: the suggested one)."""
        self.request({"type": "edit", "answer": answer, "layer": self.controls.edit_layer if layer is None else layer})

    def undo(self) -> None:
        self.request({"type": "undo"})

    def request(self, content: Any, buffers: list | None = None) -> None:
        """Handle ``content`` as if the browser had sent it."""
        self._on_message(self.controls, content, buffers)

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until queued runs, edits and undos (and the heatmap's clicks) are done."""
        done = self._worker.wait(timeout)
        return done and all(w.wait(timeout) for w in (self.heatmap, self.overlay) if w is not None)

    @property
    def error(self) -> str:
        return self.controls.error

    def probe(self) -> Probe:
        """The probe the panel describes now (its answer is left to the model's top-1)."""
        if self._image is None:
            raise MessageError("pick an example or upload an image first")
        if not self.controls.question:
            raise MessageError("type a question first")
        return Probe(self._image, self.controls.question, self._constraints, template=self._template)

    # -- browser requests -------------------------------------------------------------------------
    def _on_message(self, _widget: Any, content: Any, buffers: list | None = None) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            request = parse_message(content, buffers, REQUESTS, binary=("upload",))
            with self.controls.hold_sync():
                self.controls.error = self.controls.error_details = self.controls.error_field = ""
            getattr(self, f"_on_{request['type']}")(request, buffers)
        except Exception as err:  # noqa: BLE001 - nothing from the browser may crash the kernel
            self._fail(err, kind)

    def _on_select(self, request: dict, _buffers: Any) -> None:
        i = index(request, "index", len(self.examples))
        example = self.examples[i]
        self._set_source(example.load_image(), example.question, example.constraints, example.label, example.template)
        self._expected = example.expected
        self.controls.example = i

    def _on_upload(self, request: dict, buffers: list | None) -> None:
        name = request.get("name") or "upload"
        if not isinstance(name, str) or len(name) > 200:
            raise MessageError("name must be a string of at most 200 characters")
        question = self.controls.question
        if request.get("question") is not None:
            question = text(request, "question", MAX_QUESTION_CHARS, "question")
        image = ex.decode_image(binary_payload(buffers, self.max_upload_bytes))
        self._set_source(image, question, self._constraints, f"upload: {name}", None)
        self._expected = None
        self.controls.example = -1

    def _on_question(self, request: dict, _buffers: Any) -> None:
        """A new question: new chips (keeping the constraints it still contains); the last run's
        answer, warnings and figures described the old one, so they go, and so do its queued runs."""
        question = text(request, "text", MAX_QUESTION_CHARS, "question")
        tokens = ex.question_tokens(self.model.tokenizer, question)
        marks = ex.constraint_marks(question, tokens, self._constraints)  # keep the phrases still present
        with self.controls.hold_sync():
            if question != self.controls.question:
                self._sources += 1
                self._show()
                self.controls.answer, self.controls.notes = {}, []
            self.controls.question, self.controls.tokens = question, tokens
            self._set_marks(marks, ex.marks_to_constraints(question, tokens, marks))

    def _on_marks(self, request: dict, _buffers: Any) -> None:
        c = self.controls
        marks = ex.check_marks(request.get("spans"), len(c.tokens))
        constraints = ex.marks_to_constraints(c.question, c.tokens, marks)
        image = self._image if self._image is not None else Image.new("RGB", (32, 32))  # spans need no pixels
        Probe(image, c.question, constraints, template=self._template).encode(self.model)  # ProbeError if refused
        self._set_marks(marks, constraints)

    def _on_corruption(self, request: dict, _buffers: Any) -> None:
        value = request.get("value")
        if value not in [option["value"] for option in self.controls.corruptions]:
            raise MessageError(f"unknown corruption {value!r}")
        self.controls.corruption = str(value)

    def _on_run(self, _request: dict, _buffers: Any) -> None:
        job = self._job()
        self._submit("run", "running", lambda: self._trace(job))

    def _on_edit(self, request: dict, _buffers: Any) -> None:
        answer = text(request, "answer", MAX_ANSWER_CHARS, "new answer")
        layer = index(request, "layer", self.model.num_layers)
        job = self._job()
        self._submit("edit", "editing", lambda: self._edit(job, answer, layer))

    def _on_undo(self, _request: dict, _buffers: Any) -> None:
        job = self._job()
        self._submit("undo", "undoing", lambda: self._undo(job))

    # -- state ------------------------------------------------------------------------------------
    def _job(self) -> _Job:
        return _Job(self.probe(), self.controls.corruption, self._expected, self._sources)

    def _set_source(
        self, image: Image.Image, question: str, constraints: list[Constraint], label: str, template: str | None
    ) -> None:
        tokens = ex.question_tokens(self.model.tokenizer, question)
        marks = ex.constraint_marks(question, tokens, constraints)
        self._image, self._template = image, template
        self._sources += 1
        self._show()
        c = self.controls
        with c.hold_sync():
            c.source, c.image, c.question, c.tokens = label, png_bytes(image, PREVIEW_SIDE), question, tokens
            c.answer, c.notes = {}, []
            self._set_marks(marks, ex.marks_to_constraints(question, tokens, marks), reset=True)

    def _set_marks(self, marks: list[dict], constraints: list[Constraint], reset: bool = False) -> None:
        """Show ``marks`` and offer image noise or noise on each constraint. The choice is kept
        while it is offered; a new image or question resets it to image noise, or, when every
        constraint is textual, to noise on the first."""
        self._constraints = constraints
        values = [IMAGE, *(f"noise:{c.text}" for c in constraints)]
        current = self.controls.corruption
        if reset or current not in values:
            textual_only = bool(constraints) and all(c.kind == "textual" for c in constraints)
            current = values[1] if textual_only else IMAGE
        with self.controls.hold_sync():
            self.controls.marks = marks
            self.controls.constraints = [_constraint_state(c) for c in constraints]
            self.controls.corruptions = [{"value": v, "label": corruption_label(v)} for v in values]
            self.controls.corruption = current

    def _show(self, *views: TraceHeatmap | PatchOverlay) -> None:
        """Put ``views`` under the panel, closing the widgets they replace."""
        old = [w for w in (self.heatmap, self.overlay) if w is not None and w not in views]
        self.heatmap = next((v for v in views if isinstance(v, TraceHeatmap)), None)
        self.overlay = next((v for v in views if isinstance(v, PatchOverlay)), None)
        self.children = (self.controls, *views)
        for widget in old:
            widget.close()

    def _submit(self, kind: str, status: str, job: Callable[[], None]) -> None:
        self._worker.submit(job, kind)
        self.controls.status = status

    def _fail(self, err: BaseException, kind: str | None, in_worker: bool = False) -> None:
        """Show ``err`` next to the control of request ``kind`` (the panel's top for none)."""
        self.errors.append(err)
        field, action = FIELDS.get(kind or "", ("", "The request"))
        message = shown(err, action)
        text = f"{message.message} {STALE_CHIPS}" if kind == "question" else message.message
        with self.controls.hold_sync():
            self.controls.error, self.controls.error_details = text, message.details
            self.controls.error_field = field
        if self._worker.pending <= int(in_worker):
            self.controls.status = "idle"

    # -- worker jobs ------------------------------------------------------------------------------
    def _session(self, probe: Probe, corruption: str, sites: Sequence[str], notes: list[str]) -> TraceSession:
        corrupt = image_noise() if corruption == IMAGE else noise(corruption.removeprefix("noise:"))
        # shown in the panel, never raised (this runs on the worker thread, where capturing warnings is unsafe)
        session = TraceSession(self.model, probe, corrupt, sites=sites, warn=False)
        notes += [note for note in session.notes if note not in notes]
        return session

    def _trace(self, job: _Job, notes: Sequence[str] = ()) -> None:
        """Report the answer (known once the clean and corrupted runs are done), then trace the probe
        (live heatmap), then the patch overlay; show nothing once another example has been picked or
        an image uploaded. The answer block sits above the figures, so it is filled before they
        appear: filled at the end, it pushed them down under the pointer."""
        notes = list(notes)
        session = self._session(job.probe, job.corruption, self.sites, notes)
        c = self.controls
        if job.source == self._sources:
            with c.hold_sync():
                c.answer = answer_state(session, job.corruption, job.expected, len(self.edits), c.runs_done + 1)
                c.notes = list(notes)
                c.runs_done += 1  # counted when its answer is shown, even if a new question then replaces it
            heatmap = TraceHeatmap(session)
            self.session = session
            self._show(heatmap)
            heatmap.trace_now()  # on this worker, so nothing else touches the model meanwhile
            if heatmap.status != "cancelled" and job.source == self._sources:
                self._show(heatmap, self._overlay(job, heatmap, notes))
        with c.hold_sync():
            if job.source == self._sources:
                c.notes, c.edit_layer = notes, self._suggested_layer(job.probe)
            if self._worker.pending <= 1:
                c.status = "idle"

    def _overlay(self, job: _Job, heatmap: TraceHeatmap, notes: list[str]) -> PatchOverlay:
        """Per-patch effects of restoring each visual token's hidden state, with the image noised
        (whatever the heatmap's corruption was: its line above the figure names both)."""
        if job.corruption == IMAGE and "hidden" in heatmap.results:
            session, result = heatmap.require_session(), heatmap.results["hidden"]
        else:
            session = self._session(job.probe, IMAGE, ("hidden",), notes)
            result = session.trace("hidden", progress=False)
        used = describe_corruption(result.settings.get("corruption"))
        if job.corruption != IMAGE:  # say so: the overlay's corruption is not the heatmap's
            used += f" (the heatmap above used {corruption_label(job.corruption)})"
        overlay = PatchOverlay.from_trace(result, job.probe.image, patch_curve(session), corruption=used)
        heatmap.link(overlay)
        return overlay

    def _suggested_layer(self, probe: Probe) -> int:
        """:func:`~mllm_lens.editing.causal_layer` of ``probe``; the last suggestion if it has none."""
        if not any(c.kind == "visual" for c in probe.constraints):
            return self.controls.edit_layer
        try:
            return causal_layer(self.model, probe, key_token=self.key_token)
        except MllmLensError:
            return self.controls.edit_layer

    def _edit(self, job: _Job, answer: str, layer: int) -> None:
        options = {"site": "mlp", "key_token": self.key_token, **self.edit_options}
        handle = edit(self.model, job.probe, answer, layer=layer, warn=False, **options)
        self.edits.append(handle)
        self.controls.edits = [edit_state(h) for h in self.edits]
        self._trace(job, list(handle.info.get("notes", [])))

    def _undo(self, job: _Job) -> None:
        if not self.edits:
            raise MessageError("there is no edit to undo")
        self.edits[-1].undo()  # raises (and keeps the edit) if the weights were changed behind its back
        self.edits.pop()
        self.controls.edits = [edit_state(h) for h in self.edits]
        self._trace(job)


def _constraint_state(constraint: Constraint) -> dict:
    """``{"text", "kind"}`` for the panel, plus ``"occurrence"`` for a phrase the question repeats."""
    state: dict = {"text": constraint.text, "kind": constraint.kind}
    if constraint.occurrence is not None:
        state["occurrence"] = constraint.occurrence
    return state
