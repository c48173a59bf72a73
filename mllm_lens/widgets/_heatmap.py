"""TraceHeatmap: the layer x position heatmap of one or several traces, live and clickable."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets as t

from mllm_lens.errors import TraceConfigError
from mllm_lens.export import (
    SCALES,
    SITE_TITLES,
    VALUES,
    describe_corruption,
    heatmap_state,
    marked_spans,
    to_html,
    to_svg,
)
from mllm_lens.results import TraceResult
from mllm_lens.tracing.session import CellOutcome, TraceSession
from mllm_lens.tracing.windows import window_layers
from mllm_lens.widgets._base import MessageError, Worker, batched, bundle, index, parse_message, patch_positions
from mllm_lens.widgets._codec import ARRAY
from mllm_lens.widgets._errors import shown

if TYPE_CHECKING:
    from mllm_lens.widgets._overlay import PatchOverlay


EXPORTS = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html"}  # PNG is drawn in the page


class _Cancelled(Exception):
    """Raised from the trace's batch callback when the user pressed Cancel."""


def panel(site: str) -> dict[str, str]:
    """A heatmap panel (or site option): the site and its title ("MLP")."""
    return {"site": site, "title": SITE_TITLES.get(site, site)}


def window_refusal(window: Any, mode: str, layers: int) -> str:
    """Why ``window`` cannot trace a model of ``layers`` layers under ``mode``, in words, with the
    windows that can and the model's layer count they follow from (the page's window input offers
    the same range)."""
    most = layers if mode == "rome" else max(1, (layers - 1) // 2)
    fits = f"1 to {most}" if most > 1 else "1"
    if isinstance(window, int) and not isinstance(window, bool) and window > most:
        span = window if mode == "rome" else 2 * window + 1
        return f"Window {window} restores {span} layers, more than this model's {layers}: choose {fits}."
    allowed = f"a whole number from {fits}" if most > 1 else "1"
    return f"The window must be {allowed} (the model has {layers} layers)."


class TraceHeatmap(anywidget.AnyWidget):
    """Heatmap(s) of restored target probability, rows = prompt positions, columns = layers.

    ``TraceHeatmap(result)`` or ``TraceHeatmap([hidden, mlp, attn])`` shows finished traces side by
    side; pass ``session=`` (the :class:`~mllm_lens.TraceSession` they came from) to make cells
    clickable. ``TraceHeatmap(session)`` starts empty: :meth:`run` fills the cells live in the
    background (progress bar, Cancel button). The image's visual tokens form one band row (its
    best score per layer) that expands to one row per image position.

    Clicking a cell (or Enter on the keyboard-focused cell) sends ``{type: "cell", panel, layer,
    position}``; the kernel re-runs that restoration (same corruption, window and site) on the
    worker thread and sets ``cell_result`` (clean / corrupted / restored top-k answers) and
    ``clicks_done``. Requests are queued, never cancelled (see ``mllm_lens.widgets._base``).
    Without a session (``clickable`` false) a click only reads the cell out: nothing is promised.

    The title names the question, the target and the corruption; on the token axis corrupted
    rows are starred and constraint phrases barred (``spans``), the highlighted image rows always
    labelled. Beside the heatmap: the focused cell's row as a per-layer curve (read from
    ``scores``, no kernel call), a score control (``value``: p, indirect effect, or ROME's
    normalised effect (p − corrupted) / (clean − corrupted), defined under the legend), a site
    control (:meth:`show_site`: one of ``site_options`` or all of them), and with a session a
    window control (a change re-traces; a window the model cannot take is refused beside the
    input, ``window_error``). Download buttons save PNG (drawn in the page) and SVG / HTML
    (:meth:`export`, sent by the kernel, in the chosen ``value`` and ``scale``).

    Colours follow ``scale`` (``js/src/policy.js``): ``"anchored"`` (default) spans p from the
    corrupted to the clean probability (indirect effect from 0, normalised effect 0–1; where clean
    and corrupted differ by under ``mllm_lens.export.MIN_GAP`` no normalised effect is painted and
    the legend says why in words), fixed before a live fill starts; ``"fixed"`` spans 0–1 and
    ``"auto"`` the data's min–max. ``vmin`` / ``vmax`` override an end.
    """

    _esm = bundle()
    _widget = t.Unicode("heatmap").tag(sync=True)
    scores = t.Any(None).tag(sync=True, **ARRAY)  # float32 [panels, layers, positions], NaN = not yet traced
    panels: t.List[Any] = t.List().tag(sync=True)  # [{"site", "title"}]
    site_options: t.List[Any] = t.List().tag(sync=True)  # [{"site", "title"}] of the site control (none: no control)
    labels = t.List(t.Unicode()).tag(sync=True)
    image_span = t.List([0, 0]).tag(sync=True)
    patch_grid = t.List([0, 0]).tag(sync=True)
    clean_prob = t.Float(0.0).tag(sync=True)
    corrupted_prob = t.Float(0.0).tag(sync=True)
    target_token = t.Unicode("").tag(sync=True)
    question = t.Unicode("").tag(sync=True)  # the title names the question, target and corruption
    corruption = t.Unicode("").tag(sync=True)  # in words (mllm_lens.export.describe_corruption)
    spans: t.List[Any] = t.List().tag(sync=True)  # token-axis marks (mllm_lens.export.marked_spans)
    expanded = t.Bool(False).tag(sync=True)
    colormap = t.Enum(("viridis", "cividis", "greys"), "viridis").tag(sync=True)
    value = t.Enum(VALUES, "score").tag(sync=True)  # what is painted (mllm_lens.export.painted)
    scale = t.Enum(SCALES, "anchored").tag(sync=True)
    vmin = t.Float(None, allow_none=True).tag(sync=True)
    vmax = t.Float(None, allow_none=True).tag(sync=True)
    highlight = t.List(t.Int()).tag(sync=True)  # positions outlined (e.g. patches picked in a linked overlay)
    window = t.Int(1).tag(sync=True)
    window_mode = t.Unicode("paper").tag(sync=True)
    top_k = t.Int(5).tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    error = t.Unicode("").tag(sync=True)  # a plain sentence (see mllm_lens.widgets._errors)
    error_details = t.Unicode("").tag(sync=True)  # the Python exception behind it
    window_error = t.Unicode("").tag(sync=True)  # a refused window, in words, shown next to its input
    window_error_details = t.Unicode("").tag(sync=True)
    clickable = t.Bool(False).tag(sync=True)  # a click re-runs the cell (a session is attached)
    cell_result = t.Dict().tag(sync=True)
    clicks_done = t.Int(0).tag(sync=True)  # restorations the kernel has finished for this widget
    downloads = t.List(t.Unicode(), list(EXPORTS)).tag(sync=True)  # the download buttons shown

    def __init__(
        self,
        source: TraceSession | TraceResult | Sequence[TraceResult],
        *,
        session: TraceSession | None = None,
        sites: Sequence[str] | None = None,
        top_k: int = 5,
        colormap: str = "viridis",
        **kwargs: Any,
    ) -> None:
        if isinstance(source, TraceSession):
            session, state, settings = source, self._empty_state(source, sites), {}
            self.results: dict[str, TraceResult] = {}
        else:
            state = heatmap_state(source)
            self.results = {r.site: r for r in ([source] if isinstance(source, TraceResult) else source)}
            settings = next(iter(self.results.values())).settings
        sites = list(session.sites if session is not None else self.results)
        super().__init__(
            **state,
            site_options=[panel(s) for s in sites] if len(sites) > 1 else [],
            top_k=top_k,
            colormap=colormap,
            clickable=session is not None,
            window=int(settings.get("window", 1)),
            window_mode=str(settings.get("window_mode", "paper")),
            **kwargs,
        )
        self.session = session
        self.outcomes: list[CellOutcome] = []
        self.errors: list[BaseException] = []
        self._cancel = threading.Event()
        self._worker = Worker(lambda err, kind: self._fail(err, kind, in_worker=True))
        self._overlays: list[PatchOverlay] = []
        self.on_msg(self._on_message)

    @staticmethod
    def _empty_state(session: TraceSession, sites: Sequence[str] | None) -> dict:
        sites = tuple(sites or session.sites)
        enc = session.encoded
        described = session.corruption.describe(enc)
        kinds = {c.text: c.kind for c in enc.probe.constraints}
        return {
            "scores": np.full((len(sites), session.num_layers, enc.length), np.nan, dtype=np.float32),
            "panels": [panel(s) for s in sites],
            "labels": list(enc.labels),
            "image_span": [int(v) for v in enc.image_span],
            "patch_grid": [int(enc.patch_layout.rows), int(enc.patch_layout.cols)],
            "clean_prob": float(session.clean_prob),
            "corrupted_prob": float(session.corrupted_prob),
            "target_token": session.model.tokenizer.convert_ids_to_tokens(session.target),
            "question": enc.probe.question,
            "corruption": describe_corruption(described),
            "spans": marked_spans(dict(enc.spans), kinds, enc.image_span, described),
        }

    # -- kernel-side API -------------------------------------------------------------------------
    def require_session(self) -> TraceSession:
        """The heatmap's :class:`TraceSession`; a :class:`MessageError` if it was made from results only."""
        if self.session is None:
            raise MessageError("this heatmap has no TraceSession: pass session=... to re-run cells")
        return self.session

    def run(self, window: int | None = None, window_mode: str | None = None) -> TraceHeatmap:
        """Trace every panel's site in the background, filling cells live; returns at once. A
        window that does not fit the model raises :class:`~mllm_lens.TraceConfigError` here."""
        if self.session is None:
            raise ValueError("run() needs a TraceSession: TraceHeatmap(session) or session=...")
        window = self.window if window is None else window
        window_mode = self.window_mode if window_mode is None else window_mode
        window_layers(0, window, window_mode, self.session.num_layers)
        with batched(self):
            if (window, window_mode) != (self.window, self.window_mode):
                self.cell_result = {}  # it answered a click at the old window
            self.window, self.window_mode = window, window_mode
            self.window_error = self.window_error_details = ""
        self._cancel.clear()
        self._worker.submit(self.trace_now, "trace")
        return self

    def show_site(self, site: str) -> None:
        """Show one site's panel (``"hidden"``, ``"mlp"``, ``"attn"``) or ``"all"`` of
        ``site_options`` (what the site control sends): from finished traces at the current window
        at once, else traced live (queued like :meth:`run`)."""
        sites = [option["site"] for option in self.site_options]
        if site not in [*sites, "all"] or not sites:
            raise MessageError(f"this heatmap cannot show the site {site!r}", f"its sites: {', '.join(sites)}")
        self._worker.submit(lambda: self._show_sites(sites if site == "all" else [site]), "trace")

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until queued kernel work (traces, clicks) is done; False on timeout."""
        return self._worker.wait(timeout)

    def request(self, panel: int, layer: int, position: int) -> None:
        """What a click does, from Python: queue the restoration of one cell."""
        self._on_message(self, {"type": "cell", "panel": panel, "layer": layer, "position": position})

    def cancel(self) -> None:
        """Stop a running trace after its current batch (same as the Cancel button)."""
        self._cancel.set()

    def link(self, overlay: PatchOverlay) -> TraceHeatmap:
        """Patches picked in ``overlay`` are outlined in this heatmap (their rows when the image
        band is expanded, else the band: a pick never expands it, so the layout stays put under
        the pointer); a clicked image cell here selects its patch and layer there."""
        self._overlays.append(overlay)
        positions = self.patch_positions()

        def on_selected(change: dict) -> None:
            self.highlight = [positions[tuple(p)] for p in change["new"] if tuple(p) in positions]

        overlay.observe(on_selected, "selected")
        return self

    def patch_positions(self) -> dict[tuple[int, int], int]:
        """``(row, col)`` of each image patch -> its prompt position (from the ``<img r,c>`` labels)."""
        return patch_positions(self.labels)

    # -- browser requests ------------------------------------------------------------------------
    def _on_message(self, _widget: Any, content: Any, buffers: list | None = None) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            request = parse_message(content, buffers, ("cell", "cancel", "trace", "site", "export"))
            if request["type"] == "cancel":
                self.cancel()
            elif request["type"] == "trace":
                self._retrace(request.get("window", self.window))
            elif request["type"] == "site":
                self.show_site(str(request.get("site")))
            elif request["type"] == "export":
                self._send_export(request.get("format"))
            else:
                panels, layers, positions = np.shape(self.scores)
                cell = (index(request, "panel", panels), index(request, "layer", layers))
                position = index(request, "position", positions)
                if self.session is None:
                    raise MessageError("this heatmap has no TraceSession: pass session=... to re-run cells")
                with batched(self):
                    self.error = self.error_details = ""
                    if self.status != "tracing":
                        self.status = "running"
                self._worker.submit(lambda: self._cell_job(*cell, position), "cell")
        except Exception as err:  # noqa: BLE001 - nothing from the browser may crash the kernel
            self._fail(err, kind)

    def _retrace(self, window: Any) -> None:
        """A window from the page: traced when it fits the model, else refused next to its input."""
        layers = np.shape(self.scores)[1]
        try:
            window_layers(0, window, self.window_mode, layers)  # None (an empty input) too
        except TraceConfigError as err:
            with batched(self):
                self.window_error = window_refusal(window, self.window_mode, layers)
                self.window_error_details = f"{type(err).__name__}: {err}"
            return
        self.run(window=window)

    def export(self, fmt: str) -> bytes:
        """The finished traces as an ``"svg"`` or ``"html"`` file's bytes (what the download buttons save)."""
        if fmt not in ("svg", "html"):
            raise MessageError(f"cannot export as {fmt!r}: choose svg or html")
        found = [self.results.get(p["site"]) for p in self.panels]
        results = [r for r in found if r is not None]
        if not results or len(results) < len(found):
            raise MessageError("there is no finished trace to download yet: run it first")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trace.{fmt}"
            (to_svg if fmt == "svg" else to_html)(results, path, value=self.value, scale=self.scale)
            return path.read_bytes()

    def _send_export(self, fmt: Any) -> None:
        self.error = self.error_details = ""
        self.send({"type": "download", "name": f"trace.{fmt}", "mime": EXPORTS.get(fmt, "")}, [self.export(fmt)])

    def _fail(self, err: BaseException, kind: str | None, in_worker: bool = False) -> None:
        self.errors.append(err)
        action = {"trace": "The trace", "export": "The download"}.get(kind or "", "Re-running the restoration")
        message = shown(err, action)
        with batched(self):
            self.error, self.error_details = message.message, message.details
            if self._worker.pending <= int(in_worker):  # nothing else queued: the widget is idle again
                self.status = "idle"

    def _cell_job(self, panel: int, layer: int, position: int) -> None:
        site = self.panels[panel]["site"]
        out = self.require_session().cell(site, layer, position, self.window, self.window_mode, top_k=self.top_k)
        self.outcomes.append(out)
        for overlay in self._overlays:
            patch = next((rc for rc, pos in self.patch_positions().items() if pos == position), None)
            if patch is not None:
                with batched(overlay):
                    overlay.layer = min(layer, overlay.num_layers - 1)
                    overlay.selected = [list(patch)]
        with batched(self):
            self.clicks_done += 1
            result = asdict(out)
            result["layers"] = list(out.layers)
            for key in ("clean_top", "corrupted_top", "restored_top"):
                result[key] = [[token, float(prob)] for token, prob in result[key]]
            self.cell_result = {**result, "panel": panel, "run": self.clicks_done}
            if self._worker.pending <= 1:
                self.status = "idle"

    def _show_sites(self, sites: list[str]) -> None:
        found = [self.results.get(site) for site in sites]
        finished = [r for r in found if r is not None and self._traced_now(r)]
        with batched(self):
            self.cell_result = {}  # it answered a click on the old panels
            self.panels = [panel(site) for site in sites]
            if len(finished) == len(sites):
                self.scores = np.stack([r.scores for r in finished]).astype(np.float32)
            else:
                self.scores = np.full((len(sites), *np.shape(self.scores)[1:]), np.nan, dtype=np.float32)
        if len(finished) < len(sites):
            self.trace_now()

    def _traced_now(self, result: TraceResult) -> bool:
        """Whether ``result`` was traced with the window now set (a window change re-traces)."""
        settings = result.settings
        return settings.get("window", 1) == self.window and settings.get("window_mode", "paper") == self.window_mode

    def trace_now(self) -> None:
        """Trace every panel on the calling thread, filling cells live (:meth:`run` queues this
        on the widget's worker; a caller that already owns the model's worker calls it directly)."""
        session = self.require_session()
        live = np.full(np.shape(self.scores), np.nan, dtype=np.float32)  # a re-run (new window) starts blank
        n_layers, length = live.shape[1:]
        todo = n_layers * sum(session.executor.restorable(p) for p in range(length))
        total, done, last = todo * len(self.panels), 0, 0.0
        self.status, self.progress = "tracing", 0.0
        try:
            for k, panel in enumerate(self.panels):

                def on_cells(cells: list[tuple[int, int]], probs: np.ndarray, k: int = k) -> None:
                    nonlocal done, last
                    if self._cancel.is_set():
                        raise _Cancelled
                    for (layer, pos), prob in zip(cells, probs, strict=True):
                        live[k, layer, pos] = prob
                    done += len(cells)
                    if time.monotonic() - last > 0.1:  # at most ~10 updates a second cross the wire
                        last = time.monotonic()
                        with batched(self):
                            self.scores, self.progress = live.copy(), done / max(total, 1)

                result = session.trace(panel["site"], self.window, self.window_mode, progress=False, on_cells=on_cells)
                self.results[panel["site"]] = result
                live[k] = result.scores
                done = (k + 1) * todo
            with batched(self):
                self.scores, self.progress, self.status = live.copy(), 1.0, "idle"
        except _Cancelled:
            with batched(self):
                self.scores, self.status = live.copy(), "cancelled"
