"""Static exports of causal traces: a self-contained HTML page, SVG and PNG.

The HTML page inlines the widgets' JS bundle (``mllm_lens/static/widget.js``) and the trace
(scores as base64 float32), so it opens from ``file://`` with no kernel and no network: the
same heatmap as :class:`mllm_lens.widgets.TraceHeatmap`, hover readout included. SVG (plain
text, one ``<rect class="cell">`` per drawn cell) and PNG (PIL) are for papers. The image span
is collapsed into one band row (its best score per layer) unless ``collapse_image=False``.

Only numpy and PIL are used here: the engine may import this module without any widget stack.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

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
    }


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
    top: int = 26
    bottom: int = 22
    gap: int = 16
    legend: int = 70

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.values.shape

    @property
    def size(self) -> tuple[int, int]:
        panels, layers, rows = self.shape
        width = self.left + panels * layers * self.cell[0] + (panels - 1) * self.gap + self.legend
        return width, self.top + rows * self.cell[1] + self.bottom

    def origin(self, panel: int, layer: int, row: int) -> tuple[int, int]:
        x = self.left + panel * (self.shape[1] * self.cell[0] + self.gap) + layer * self.cell[0]
        return x, self.top + row * self.cell[1]


def grid(
    results: TraceResult | Sequence[TraceResult], *, collapse_image: bool = True, cell: tuple[int, int] = (14, 14)
) -> Grid:
    """Group positions into rows (image band collapsed to its best score per layer) and lay them out."""
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
    finite = values[np.isfinite(values)]
    vmin = min(float(finite.min()), first.corrupted_prob) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    left = min(160, 7 * max(len(s) for s in labels)) + 10
    titles = [SITE_TITLES.get(r.site, r.site) for r in items]
    return Grid(titles, labels, rows, values, vmin, max(vmax, vmin + 1e-9), cell, left)


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
    panels, layers, rows = g.shape
    for p in range(panels):
        x0, _ = g.origin(p, 0, 0)
        out.append(f'<text x="{x0}" y="{g.top - 8}" font-weight="bold">{esc(g.titles[p])}</text>')
        for layer in range(0, layers, max(1, 20 // cw)):
            out.append(f'<text x="{x0 + layer * cw}" y="{height - 8}" font-size="9">{layer}</text>')
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
    lx = width - g.legend + 12
    out.append(f'<rect class="legend" x="{lx}" y="{g.top}" width="12" height="{rows * ch}" fill="url(#scale)"/>')
    out.append(f'<text x="{lx + 16}" y="{g.top + 9}" font-size="9">{g.vmax:.3f}</text>')
    out.append(f'<text x="{lx + 16}" y="{g.top + rows * ch}" font-size="9">{g.vmin:.3f}</text>')
    out.append("</svg>")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out), encoding="utf-8")
    return path


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
    for p in range(panels):
        x0, _ = g.origin(p, 0, 0)
        draw.text((x0 * scale, 8 * scale), g.titles[p], fill="black", font=font)
        for layer in range(layers):
            for r in range(rows):
                x, y = g.origin(p, layer, r)
                box = (x * scale, y * scale, (x + cw) * scale - 1, (y + ch) * scale - 1)
                draw.rectangle(box, fill=tuple(int(c) for c in colours[p, layer, r]))
        for layer in range(0, layers, max(1, 20 // cw)):
            draw.text(((x0 + layer * cw) * scale, (height - 18) * scale), str(layer), fill="black", font=font)
    for r, label in enumerate(g.row_labels):
        draw.text(
            ((g.left - 6) * scale, (g.top + r * ch + ch / 2) * scale), label, fill="black", font=font, anchor="rm"
        )
    lx = width - g.legend + 12
    ramp = rgb(np.linspace(g.vmax, g.vmin, rows * ch * scale), g.vmin, g.vmax)
    for i, colour in enumerate(ramp):
        y = g.top * scale + i
        draw.line((lx * scale, y, (lx + 12) * scale, y), fill=tuple(int(c) for c in colour))
    draw.text(((lx + 16) * scale, g.top * scale), f"{g.vmax:.3f}", fill="black", font=font)
    draw.text(((lx + 16) * scale, (g.top + rows * ch - 10) * scale), f"{g.vmin:.3f}", fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _script_safe(text: str) -> str:
    """Text that cannot close the surrounding ``<script>`` element."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


def to_html(results: TraceResult | Sequence[TraceResult], path: str | Path, *, title: str | None = None) -> Path:
    """Write a self-contained page (bundle and data inlined, no kernel, works from ``file://``)."""
    items = as_results(results)
    state = heatmap_state(items)
    scores = state.pop("scores")
    state["scores"] = {
        "b64": base64.b64encode(scores.tobytes()).decode(),
        "dtype": "float32",
        "shape": list(scores.shape),
    }
    state.update(expanded=False, colormap="viridis", value="score", vmin=None, vmax=None, highlight=[])
    state.update(status="static page: no kernel, clicks only read out", progress=0.0, error="", cell_result={})
    heading = title or f"Causal trace of {items[0].target_token!r}"
    question = items[0].settings.get("question", "")
    data = json.dumps(state).replace("<", "\\u003c")  # valid JSON that cannot close the script element
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title></head>
<body style="font-family:system-ui,sans-serif;margin:16px">
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
