"""Static exports of causal traces: a self-contained HTML page, SVG and PNG.

The HTML page inlines the widgets' JS bundle (``mllm_lens/static/widget.js``) and the trace
(scores as base64 float32), so it opens from ``file://`` with no kernel and no network: the
same heatmap as :class:`mllm_lens.widgets.TraceHeatmap`, hover readout included. SVG (plain
text, one ``<rect class="cell">`` per drawn cell) and PNG (PIL) are for papers. The image span
is collapsed into one band row (its best score per layer) unless ``collapse_image=False``.

Colours follow the widgets' policy (``js/src/policy.js``, mirrored by :func:`color_range`): by
default p(target) is painted from the corrupted to the clean probability, at least
:data:`MIN_SPAN` wide, so a trace whose restorations barely move p is not painted bright; the
figure then says so in words (:func:`small_effect_note`). The colour bar carries its end values
and marks the clean and corrupted probabilities. ``value`` picks what is painted (:func:`painted`):
p itself, the indirect effect, or ROME's normalised effect (anchored 0–1); the figure's title
then defines it in a third line. When clean and corrupted p differ by less than :data:`MIN_GAP`
the normalised effect means nothing: no cell is painted and the colour bar gives way to words
(:func:`gap_note`).

Only numpy and PIL are used here: the engine may import this module without any widget stack.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mllm_lens.errors import MissingFileError
from mllm_lens.io import atomic_path

if TYPE_CHECKING:
    from mllm_lens.results import TraceResult

BUNDLE = Path(__file__).parent / "static" / "widget.js"
SITE_TITLES = {"hidden": "hidden state", "mlp": "MLP", "attn": "attention"}
# Control points of matplotlib's viridis / cividis, the same table as js/src/colormap.js.
COLORMAPS = {
    "viridis": [
        (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
        (31, 158, 137), (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37),
    ],
    "cividis": [
        (0, 34, 78), (18, 53, 112), (59, 73, 108), (87, 93, 109), (112, 113, 115),
        (138, 134, 120), (165, 156, 116), (195, 179, 105), (225, 204, 85), (254, 232, 56),
    ],
}  # fmt: skip
NAN_RGB = (220, 220, 220)
MIN_SPAN = 0.05  # the narrowest span an anchored scale paints, as in js/src/policy.js
MIN_GAP = 1e-3  # the smallest |clean - corrupted| the normalised effect divides by, as in js/src/policy.js
SCALES = ("anchored", "fixed", "auto")
VALUES = ("score", "indirect_effect", "normalized")  # what the colours show, as js/src/policy.js
NOTE_CHAR_WIDTH = 5.6  # px per character of the note's 11 px sans-serif line (room kept for it)
HEADING_LINE = 16  # px per title line above a static figure
PNG_TEXT = str.maketrans({"→": "->", "−": "-", "–": "-"})  # PIL's default font has no glyph for these
# The exported page's colours: JupyterLab's variable names, light or dark by the reader's preference.
PAGE_THEME = """
:root{--jp-ui-font-color1:#1f1f1f;--jp-ui-font-color2:#595959;--jp-layout-color0:#fff;--jp-layout-color1:#fff;
--jp-layout-color2:#eee;--jp-border-color1:#9e9e9e;--jp-brand-color1:#1565c0;--jp-error-color1:#c62828;
--jp-warn-color1:#a15c00;color-scheme:light dark}
@media (prefers-color-scheme: dark){:root{--jp-ui-font-color1:#e6e6e6;--jp-ui-font-color2:#b3b3b3;
--jp-layout-color0:#111;--jp-layout-color1:#1e1e1e;--jp-layout-color2:#2c2c2c;--jp-border-color1:#616161;
--jp-brand-color1:#64b5f6;--jp-error-color1:#ef5350;--jp-warn-color1:#ffb74d}}
body{font-family:system-ui,sans-serif;margin:16px;background:var(--jp-layout-color0);color:var(--jp-ui-font-color1)}
"""


def bundle_text() -> str:
    """The built widget bundle; a clear error when ``js/`` was never built."""
    if not BUNDLE.is_file():
        raise MissingFileError(
            f"the widget bundle {BUNDLE} is missing: build it with `npm ci && npm run build` in js/ "
            "(or `bash .ci/e2e_setup.sh`), or install the package with `pip install .` where npm is available"
        )
    return BUNDLE.read_text(encoding="utf-8")


def as_results(results: TraceResult | Sequence[TraceResult]) -> list[TraceResult]:
    """One or several traces of the same prompt (e.g. the hidden / MLP / attention sites)."""
    if hasattr(results, "scores"):
        out = [cast("TraceResult", results)]
    else:
        out = list(results)
    if not out:
        raise ValueError("no trace results given")
    first = out[0]
    for other in out[1:]:
        if other.labels != first.labels or other.scores.shape != first.scores.shape:
            raise ValueError("traces shown together must share their prompt and number of layers")
    return out


def describe_corruption(described: Any) -> str:
    """Plain words for a corruption's ``describe()`` dict (a trace's ``settings["corruption"]``):
    "image noise on all visual tokens", "noise on 'this country'", "'x' replaced by 'y'"."""
    if not isinstance(described, dict):
        return ""
    kind = described.get("kind")
    if kind == "image_noise":
        patches = described.get("patches")
        return "image noise on all visual tokens" if patches is None else f"image noise on {len(patches)} patches"
    if kind == "constraint_noise":
        return f"noise on {described.get('constraint')!r}"
    if kind == "replace":
        return f"{described.get('constraint')!r} replaced by {described.get('by')!r}"
    return str(kind or "")


def marked_spans(
    spans: Mapping[str, tuple[int, int]], kinds: Mapping[str, str], image_span: Sequence[int], described: Any
) -> list[dict]:
    """The token axis's marks: ``[{start, end, kind, text, corrupted}]`` (end exclusive) for each
    constraint phrase (kind ``"visual"`` / ``"textual"``) and the image (kind ``"image"``), with
    ``corrupted`` true where the corruption ``described`` (its ``describe()`` dict) acts."""
    kind = described.get("kind") if isinstance(described, dict) else None
    target = described.get("constraint") if kind in ("constraint_noise", "replace") else None
    out = [
        {"start": int(s), "end": int(e), "kind": kinds.get(text, "textual"), "text": text, "corrupted": text == target}
        for text, (s, e) in spans.items()
    ]
    start, end = (int(v) for v in image_span)
    if end > start:
        out.append({"start": start, "end": end, "kind": "image", "text": "image", "corrupted": kind == "image_noise"})
    return out


def trace_context(result: TraceResult) -> dict:
    """What a figure of ``result`` names besides its scores: the question, the corruption in
    words and the token axis's marks (:func:`marked_spans`)."""
    described = result.settings.get("corruption")
    return {
        "question": str(result.settings.get("question", "")),
        "corruption": describe_corruption(described),
        "spans": marked_spans(result.constraint_spans, result.constraint_kinds, result.image_span, described),
    }


def heatmap_state(results: TraceResult | Sequence[TraceResult]) -> dict:
    """The heatmap widget's state for ``results``; ``scores`` is float32 ``[panels, layers, positions]``."""
    items = as_results(results)
    first = items[0]
    return {
        "_widget": "heatmap",
        "scores": np.ascontiguousarray(np.stack([r.scores for r in items]), dtype=np.float32),
        "panels": [{"site": r.site, "title": SITE_TITLES.get(r.site, r.site)} for r in items],
        "labels": list(first.labels),
        "image_span": [int(v) for v in first.image_span],
        "patch_grid": [int(v) for v in first.patch_grid],
        "clean_prob": float(first.clean_prob),
        "corrupted_prob": float(first.corrupted_prob),
        "target_token": first.target_token,
        **trace_context(first),
    }


def _finite_range(data: np.ndarray | None) -> tuple[float, float]:
    finite = np.asarray(data if data is not None else [], dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def check_options(value: str, scale: str) -> None:
    """A ``ValueError`` naming the choices unless ``value`` is in :data:`VALUES` and ``scale`` in :data:`SCALES`."""
    if value not in VALUES:
        raise ValueError(f"value must be one of {VALUES}, got {value!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def gap_too_small(value: str, clean: float, corrupted: float) -> bool:
    """Whether ``value`` is the normalised effect with clean and corrupted p closer than
    :data:`MIN_GAP` (dividing by that gap turns noise into any "effect"), as ``gapTooSmall`` in JS."""
    return value == "normalized" and abs(clean - corrupted) < MIN_GAP


def painted(scores: np.ndarray, value: str, clean: float, corrupted: float) -> np.ndarray:
    """Restored probabilities in the units ``value`` paints: p (``"score"``), p − corrupted
    (``"indirect_effect"``) or (p − corrupted) / (clean − corrupted) (``"normalized"``: 0 at the
    corrupted, 1 at the clean probability; all NaN when they differ by less than :data:`MIN_GAP`,
    where :attr:`TraceResult.normalized_effect` still divides), as ``js/src/policy.js``."""
    scores = np.asarray(scores, dtype=np.float64)
    if value == "indirect_effect":
        return scores - corrupted
    if gap_too_small(value, clean, corrupted):
        return np.full_like(scores, np.nan)
    if value == "normalized":
        return (scores - corrupted) / (clean - corrupted)
    return scores


def value_words(value: str, target: str) -> tuple[str, str]:
    """The colour bar's unit and the definition of what is painted, as ``valueWords`` in ``js/src/policy.js``."""
    p = f"p({target or 'answer'})"
    if value == "indirect_effect":
        return "indirect effect", f"indirect effect = restored {p} − corrupted {p}"
    if value == "normalized":
        return (
            "normalised effect",
            f"normalised = (restored − corrupted) / (clean − corrupted) {p}: 0 = corrupted, 1 = clean (ROME)",
        )
    return p, f"{p} with the cell's state restored from the clean run"


def color_range(
    clean: float, corrupted: float, *, value: str = "score", scale: str = "anchored", data: np.ndarray | None = None
) -> tuple[float, float]:
    """``(lo, hi)`` of the colour ramp, in the units painted (:func:`painted`; ``data`` already in
    them). ``"anchored"``: corrupted → clean (indirect effect 0 → clean − corrupted), at least
    :data:`MIN_SPAN` wide and inside [0, 1], and the normalised effect 0 → 1; ``"fixed"``: 0–1;
    ``"auto"``: the finite min–max of ``data``."""
    check_options(value, scale)
    lo, hi = 0.0, 1.0
    if scale == "auto":
        lo, hi = _finite_range(data)
    elif scale == "anchored" and value != "normalized":
        a, b = (0.0, clean - corrupted) if value == "indirect_effect" else (corrupted, clean)
        lo, hi = min(a, b), max(a, b)
        if hi - lo < MIN_SPAN:
            lo, hi = (lo, lo + MIN_SPAN) if lo + MIN_SPAN <= 1 or lo < 0 else (1 - MIN_SPAN, 1.0)
    return lo, hi if hi > lo else lo + 1e-9


def gap_note(clean: float, corrupted: float) -> str | None:
    """The normalised effect's caveat when clean and corrupted p differ by less than
    :data:`MIN_SPAN` (it stretches that small change over the whole scale), and under
    :data:`MIN_GAP` the words that stand in for the colour bar, as ``gapNote`` in JS."""
    gap = abs(clean - corrupted)
    instead = "no normalised effect is shown; choose probability or indirect effect"
    if gap == 0:
        return f"clean and corrupted p are equal ({clean:.3f}): {instead}"
    if gap < MIN_GAP:
        shown = f"{gap:.1g}".replace("e-0", "e-")  # as JS's toPrecision(1): 0.0004, 1e-7
        return f"clean and corrupted p differ by only {shown} (under {MIN_GAP}), too little to divide by: {instead}"
    if gap < MIN_SPAN:
        return f"clean and corrupted p differ by only {gap:.3f}: normalising stretches that small change over the scale"
    return None


def small_effect_note(scores: np.ndarray, corrupted: float) -> str | None:
    """ "restoring changes p(answer) by at most 0.006: ..." when every restored p (``scores``)
    lies within :data:`MIN_SPAN` of the corrupted one; None otherwise."""
    change = np.abs(np.asarray(scores, dtype=np.float64) - corrupted)
    change = change[np.isfinite(change)]
    if not change.size or change.max() >= MIN_SPAN:
        return None
    return (
        f"restoring changes p(answer) by at most {change.max():.3f}: "
        f"too small to colour (the scale spans at least {MIN_SPAN})"
    )


def rgb(values: np.ndarray, vmin: float, vmax: float, cmap: str = "viridis") -> np.ndarray:
    """``[..., 3]`` uint8 colours of ``values`` on ``cmap`` over ``[vmin, vmax]``; NaN -> grey."""
    stops = np.asarray(COLORMAPS[cmap], dtype=np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0, 1) * (len(stops) - 1)
    i = np.minimum(np.floor(t).astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    out = np.rint(stops[i] + f * (stops[i + 1] - stops[i])).astype(np.uint8)
    out[np.isnan(values)] = NAN_RGB
    return out


@dataclass
class Grid:
    """Rows (position groups), colours and pixel geometry of a static heatmap."""

    titles: list[str]
    row_labels: list[str]
    row_positions: list[list[int]]
    values: np.ndarray  # [panels, layers, rows]
    vmin: float
    vmax: float
    cell: tuple[int, int]  # (width, height)
    left: int
    marks: list[tuple[str, float, float]]  # (name, p, painted p): the corrupted and clean probabilities
    unit: str  # what the colours are, over the colour bar: "p(target)"
    note: str | None = None  # small_effect_note (gap_note when normalised), written under the figure
    colour_bar: bool = True  # False: nothing painted to scale (gap_too_small), the note says why
    heading: tuple[str, ...] = ()  # the title lines: question → target, corruption and anchors, what is painted
    header: int = 26  # room for the panel titles
    bottom: int = 34
    gap: int = 16
    legend: int = 110

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.values.shape

    @property
    def size(self) -> tuple[int, int]:
        text = max([self.note or "", *self.heading], key=len)
        width = max(self.legend_x - 12 + self.legend, 10 + round(NOTE_CHAR_WIDTH * len(text)))
        return width, self.axis_y + self.bottom + (16 if self.note else 0)

    @property
    def top(self) -> int:
        """Top of the cells: under the heading's lines and the panel titles."""
        return HEADING_LINE * len(self.heading) + self.header

    @property
    def legend_x(self) -> int:
        """Left edge of the colour bar (right of the last panel)."""
        panels, layers, _ = self.shape
        return self.left + panels * layers * self.cell[0] + (panels - 1) * self.gap + 12

    @property
    def axis_y(self) -> int:
        """Top of the layer axis (just under the cells)."""
        return self.top + self.shape[2] * self.cell[1]

    def origin(self, panel: int, layer: int, row: int) -> tuple[int, int]:
        x = self.left + panel * (self.shape[1] * self.cell[0] + self.gap) + layer * self.cell[0]
        return x, self.top + row * self.cell[1]

    def legend_labels(self) -> list[tuple[float, str]]:
        """``(t, text)`` beside the colour bar, t in [0, 1] from its bottom: the end values, and
        the corrupted and clean marks (joined to an end value they sit next to)."""
        labels = {1.0: f"{self.vmax:.3f}", 0.0: f"{self.vmin:.3f}"}
        for name, p, at in self.marks:
            if not np.isfinite(at):
                continue
            t = min(1.0, max(0.0, (at - self.vmin) / (self.vmax - self.vmin)))
            near = next((end for end in labels if abs(end - t) * self.shape[2] * self.cell[1] < 10), None)
            if near is None:
                labels[t] = f"{name} {p:.3f}"
            elif labels[near].startswith(f"{p:.3f}"):
                labels[near] += f" {name}"
            else:
                labels[near] += f" ({name} {p:.3f})"
        return sorted(labels.items(), reverse=True)


def grid(
    results: TraceResult | Sequence[TraceResult],
    *,
    collapse_image: bool = True,
    cell: tuple[int, int] = (14, 14),
    scale: str = "anchored",
    value: str = "score",
) -> Grid:
    """Group positions into rows (image band collapsed to its best score per layer) and lay them
    out; colours of ``value`` (:func:`painted`) over :func:`color_range` of ``scale``."""
    items = as_results(results)
    first = items[0]
    start, end = first.image_span
    rows: list[list[int]] = []
    labels: list[str] = []
    for pos, label in enumerate(first.labels):
        if collapse_image and start <= pos < end:
            if pos == start:
                rows.append(list(range(start, end)))
                labels.append(f"image ({end - start})")
            continue
        rows.append([pos])
        labels.append(label)
    scores = np.stack([r.scores for r in items]).astype(np.float64)  # [panels, layers, positions]
    values = np.full((len(items), first.num_layers, len(rows)), np.nan)
    for j, positions in enumerate(rows):
        block = scores[:, :, positions]
        ok = ~np.isnan(block).all(-1)
        values[:, :, j][ok] = np.nanmax(np.where(np.isnan(block), -np.inf, block), -1)[ok]
    clean, corrupted = float(first.clean_prob), float(first.corrupted_prob)
    values = painted(values, value, clean, corrupted)
    vmin, vmax = color_range(clean, corrupted, value=value, scale=scale, data=values)
    context = trace_context(first)
    starred = {p for s in context["spans"] if s["corrupted"] for p in range(s["start"], s["end"])}
    labels = [
        f"{label} *" if starred & set(positions) else label for label, positions in zip(labels, rows, strict=True)
    ]
    left = max(40, min(160, 7 * max(len(s) for s in labels)) + 10)  # room for the "token" axis title
    titles = [SITE_TITLES.get(r.site, r.site) for r in items]
    anchors = (("corrupted", corrupted), ("clean", clean))
    marks = [(name, p, float(painted(np.array(p), value, clean, corrupted))) for name, p in anchors]
    note = gap_note(clean, corrupted) if value == "normalized" else small_effect_note(scores, corrupted)
    unit, definition = value_words(value, first.target_token)
    lines = heading(first, context) + ((definition,) if value != "score" else ())
    bar = not gap_too_small(value, clean, corrupted)
    return Grid(titles, labels, rows, values, vmin, vmax, cell, left, marks, unit, note, bar, lines)


def heading(result: TraceResult, context: dict) -> tuple[str, str]:
    """The two title lines of a static figure (as the widget's title): "“question” → 'target'"
    and the corruption (its rows marked *) with the clean and corrupted probabilities."""
    asked = f"“{context['question']}” → " if context["question"] else "target "
    how = f"corrupted by {context['corruption']} (rows marked *) · " if context["corruption"] else ""
    probs = f"clean p {result.clean_prob:.3f} · corrupted p {result.corrupted_prob:.3f}"
    return f"{asked}{result.target_token!r}", how + probs


def to_svg(results: TraceResult | Sequence[TraceResult], path: str | Path, **options) -> Path:
    """Write the heatmap as plain SVG text: one ``<rect class="cell">`` per (panel, layer, row)."""
    g = grid(results, **options)
    width, height = g.size
    colours = rgb(g.values, g.vmin, g.vmax)
    (cw, ch), esc = g.cell, html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        '<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0">',
        *(
            f'<stop offset="{i / 9:.3f}" stop-color="rgb{tuple(int(c) for c in rgb(np.array([v]), 0, 1)[0])}"/>'
            for i, v in enumerate(np.linspace(0, 1, 10))
        ),
        "</linearGradient></defs>",
    ]
    for i, line in enumerate(g.heading):
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(f'<text class="heading" x="10" y="{HEADING_LINE * (i + 1) - 3}"{weight}>{esc(line)}</text>')
    panels, layers, rows = g.shape
    for p in range(panels):
        x0, _ = g.origin(p, 0, 0)
        out.append(f'<text x="{x0}" y="{g.top - 8}" font-weight="bold">{esc(g.titles[p])}</text>')
        for layer in range(0, layers, max(1, 20 // cw)):
            out.append(f'<text x="{x0 + layer * cw}" y="{g.axis_y + 14}" font-size="9">{layer}</text>')
        for layer in range(layers):
            for r in range(rows):
                x, y = g.origin(p, layer, r)
                fill = "rgb" + str(tuple(int(c) for c in colours[p, layer, r]))
                tip = f"{esc(g.titles[p])} layer {layer} · {esc(g.row_labels[r])} · {g.values[p, layer, r]:.4f}"
                out.append(
                    f'<rect class="cell" x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{fill}" '
                    f'data-layer="{layer}" data-row="{r}"><title>{tip}</title></rect>'
                )
    for r, label in enumerate(g.row_labels):
        out.append(f'<text x="{g.left - 6}" y="{g.top + r * ch + ch - 3}" text-anchor="end">{esc(label)}</text>')
    out.append(f'<text class="axis" x="{g.left}" y="{g.axis_y + 28}">layer</text>')
    out.append(f'<text class="axis" x="{g.left - 6}" y="{g.top - 8}" text-anchor="end">token</text>')
    if g.colour_bar:
        out.extend(_svg_colour_bar(g))
    if g.note:
        out.append(f'<text class="note" x="10" y="{height - 4}">{esc(g.note)}</text>')
    out.append("</svg>")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out), encoding="utf-8")
    return path


def _svg_colour_bar(g: Grid) -> list[str]:
    """The SVG elements of the colour bar: its unit, the ramp, the end values and the marks."""
    lx, height = g.legend_x, g.shape[2] * g.cell[1]
    out = [
        f'<text class="unit" x="{lx}" y="{g.top - 8}" font-size="9">{html.escape(g.unit)}</text>',
        f'<rect class="legend" x="{lx}" y="{g.top}" width="12" height="{height}" fill="url(#scale)"/>',
    ]
    for t, text in g.legend_labels():
        mark_y = g.top + (1 - t) * height
        out.append(f'<line x1="{lx}" x2="{lx + 15}" y1="{mark_y:.1f}" y2="{mark_y:.1f}" stroke="black"/>')
        out.append(
            f'<text class="legend-label" x="{lx + 17}" y="{mark_y + 3:.1f}" font-size="9">{html.escape(text)}</text>'
        )
    return out


def to_png(results: TraceResult | Sequence[TraceResult], path: str | Path, *, scale: int = 2, **options) -> Path:
    """Draw the same heatmap as :func:`to_svg` with PIL; the image is ``scale`` times :attr:`Grid.size`."""
    from PIL import Image, ImageDraw, ImageFont

    g = grid(results, **options)
    width, height = g.size
    colours = rgb(g.values, g.vmin, g.vmax)
    image = Image.new("RGB", (width * scale, height * scale), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10 * scale)
    (cw, ch), (panels, layers, rows) = g.cell, g.shape
    for i, line in enumerate(g.heading):
        xy = (10 * scale, (HEADING_LINE * (i + 1) - 3) * scale)
        draw.text(xy, line.translate(PNG_TEXT), fill="black", font=font, anchor="ls")
    for p in range(panels):
        x0, _ = g.origin(p, 0, 0)
        draw.text((x0 * scale, (g.top - 18) * scale), g.titles[p], fill="black", font=font)
        for layer in range(layers):
            for r in range(rows):
                x, y = g.origin(p, layer, r)
                box = (x * scale, y * scale, (x + cw) * scale - 1, (y + ch) * scale - 1)
                draw.rectangle(box, fill=tuple(int(c) for c in colours[p, layer, r]))
        for layer in range(0, layers, max(1, 20 // cw)):
            draw.text(((x0 + layer * cw) * scale, (g.axis_y + 4) * scale), str(layer), fill="black", font=font)
    for r, label in enumerate(g.row_labels):
        draw.text(
            ((g.left - 6) * scale, (g.top + r * ch + ch / 2) * scale), label, fill="black", font=font, anchor="rm"
        )
    draw.text((g.left * scale, (g.axis_y + 18) * scale), "layer", fill="black", font=font)
    draw.text(((g.left - 6) * scale, (g.top - 18) * scale), "token", fill="black", font=font, anchor="ra")
    if g.colour_bar:
        _png_colour_bar(draw, g, scale)
    if g.note:
        draw.text((10 * scale, (height - 6) * scale), g.note.translate(PNG_TEXT), fill="black", font=font, anchor="ls")
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _png_colour_bar(draw: Any, g: Grid, scale: int) -> None:
    """Draw the colour bar (unit, ramp, end values, marks) of :func:`to_png` at ``scale``."""
    from PIL import ImageFont

    lx, height = g.legend_x, g.shape[2] * g.cell[1]
    small = ImageFont.load_default(size=9 * scale)
    draw.text((lx * scale, (g.top - 18) * scale), g.unit, fill="black", font=small)
    ramp = rgb(np.linspace(g.vmax, g.vmin, height * scale), g.vmin, g.vmax)
    for i, colour in enumerate(ramp):
        y = g.top * scale + i
        draw.line((lx * scale, y, (lx + 12) * scale, y), fill=tuple(int(c) for c in colour))
    for t, text in g.legend_labels():
        mark_y = (g.top + (1 - t) * height) * scale
        draw.line((lx * scale, mark_y, (lx + 15) * scale, mark_y), fill="black", width=scale)
        draw.text(((lx + 17) * scale, mark_y), text, fill="black", font=small, anchor="lm")


def _script_safe(text: str) -> str:
    """Text that cannot close the surrounding ``<script>`` element."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


def to_html(
    results: TraceResult | Sequence[TraceResult],
    path: str | Path,
    *,
    title: str | None = None,
    value: str = "score",
    scale: str = "anchored",
) -> Path:
    """Write a self-contained page (bundle and data inlined, no kernel, works from ``file://``),
    opening on ``value`` and ``scale`` (the reader can switch both). Nothing on it promises a
    re-run (``clickable`` is false: a click reads a cell out); its colours follow the reader's
    light or dark preference (:data:`PAGE_THEME`)."""
    check_options(value, scale)
    items = as_results(results)
    state = heatmap_state(items)
    scores = state.pop("scores")
    state["scores"] = {
        "b64": base64.b64encode(scores.tobytes()).decode(),
        "dtype": "float32",
        "shape": list(scores.shape),
    }
    state.update(expanded=False, colormap="viridis", value=value, scale=scale, vmin=None, vmax=None)
    state.update(highlight=[], status="static page (no kernel)", progress=0.0, error="", error_details="")
    state.update(cell_result={}, clickable=False, downloads=["png"])  # no kernel to write SVG or HTML
    heading = title or f"Causal trace of {items[0].target_token!r}"
    question = items[0].settings.get("question", "")
    data = json.dumps(state).replace("<", "\\u003c")  # valid JSON that cannot close the script element
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>{PAGE_THEME}</style></head>
<body>
<h2>{html.escape(heading)}</h2>
<p>{html.escape(question)}</p>
<div id="mll-heatmap"></div>
<script type="application/json" id="mll-state">{data}</script>
<script type="module">{_script_safe(bundle_text())}</script>
<script type="module">
const state = JSON.parse(document.getElementById("mll-state").textContent);
const {{ render, staticModel }} = globalThis.mllmLensWidgets;
render({{ model: staticModel(state), el: document.getElementById("mll-heatmap") }});
</script>
</body></html>
"""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
