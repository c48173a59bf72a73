"""Bokeh figures of causal traces: the paper's averaged per-layer curves and single layer curves.

Basu et al. (NeurIPS 2024) average indirect effects over many probes to show *which layers*
of the MLP and attention sites carry the visual constraint's fact. :func:`aggregate` computes
that average per site (mean with a spread band) from many :class:`~mllm_lens.TraceResult`
and :func:`aggregate_figure` draws it; :func:`layer_curve_figure` draws one curve ``[layers]``
(a clicked cell, a patch). Figures use no CDN: call :func:`output_inline` once in a notebook
(INLINE resources, works offline) or :func:`save_html`; ``jupyter_bokeh.BokehModel(fig)``
embeds a figure in ipywidgets layouts. ``theme`` draws them for a light or dark page
(:mod:`mllm_lens.plot_theme`; ``"auto"`` follows the theme JupyterLab saved).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.models import ColumnDataSource, HoverTool, Span  # type: ignore[attr-defined]  # exported lazily
from bokeh.plotting import figure
from bokeh.resources import INLINE

from mllm_lens.io import atomic_path
from mllm_lens.plot_theme import themed
from mllm_lens.results import TraceResult

SITE_COLORS = {"hidden": "#440154", "mlp": "#21918c", "attn": "#e69f00"}  # viridis ends + Okabe-Ito orange
EFFECTS = ("indirect", "normalized", "score")


def group_positions(result: TraceResult, group: str) -> list[int]:
    """Positions of ``group``: "visual" / "textual" (constraints of that kind), "image", "last", or a constraint."""
    if group == "last":
        return [len(result.labels) - 1]
    if group == "image":
        return list(range(*result.image_span))
    spans = [span for text, span in result.constraint_spans.items() if result.constraint_kinds.get(text) == group]
    if group in result.constraint_spans:
        spans = [result.constraint_spans[group]]
    positions = sorted({p for start, end in spans for p in range(start, end)})
    if not positions:
        raise ValueError(f"trace has no positions for group {group!r} (constraints: {result.constraint_kinds})")
    return positions


def layer_profile(
    result: TraceResult, group: str = "visual", reduce: str = "last", effect: str = "indirect"
) -> np.ndarray:
    """``[layers]``: the effect at ``group``'s positions, reduced by "last" (ROME's view), "max" or "mean"."""
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {EFFECTS}, got {effect!r}")
    values = {"indirect": result.indirect_effect, "normalized": result.normalized_effect, "score": result.scores}[
        effect
    ]
    block = values[:, group_positions(result, group)]
    if reduce == "last":
        return block[:, -1].astype(np.float64)
    if reduce == "max":
        return np.nanmax(block, axis=1)
    if reduce == "mean":
        return np.nanmean(block, axis=1)
    raise ValueError(f"reduce must be 'last', 'max' or 'mean', got {reduce!r}")


def aggregate(
    results: Sequence[TraceResult],
    group: str = "visual",
    reduce: str = "last",
    effect: str = "indirect",
    spread: str = "std",
) -> dict[str, dict[str, Any]]:
    """Per site: ``mean``, ``lo``, ``hi`` (``[layers]``; mean ± std / sem, or the 25-75 % band for
    "iqr") and ``n`` over the traces of that site. Traces of one site must share their layer count."""
    by_site: dict[str, list[np.ndarray]] = {}
    for result in results:
        by_site.setdefault(result.site, []).append(layer_profile(result, group, reduce, effect))
    if not by_site:
        raise ValueError("no trace results to aggregate")
    out = {}
    for site, curves in by_site.items():
        if len({len(c) for c in curves}) != 1:
            raise ValueError(f"{site} traces have different layer counts: {sorted({len(c) for c in curves})}")
        stack = np.stack(curves)
        mean = np.nanmean(stack, axis=0)
        if spread == "iqr":
            lo, hi = np.nanpercentile(stack, [25, 75], axis=0)
        elif spread in ("std", "sem"):
            width = np.nanstd(stack, axis=0) / (np.sqrt(len(curves)) if spread == "sem" else 1.0)
            lo, hi = mean - width, mean + width
        else:
            raise ValueError(f"spread must be 'std', 'sem' or 'iqr', got {spread!r}")
        out[site] = {"mean": mean, "lo": lo, "hi": hi, "n": len(curves)}
    return out


def band_curve(fig, stats: dict[str, Any], color: str, label: str, fill_alpha: float = 0.2):
    """Draw ``stats``' mean per layer as a line over its ``lo``-``hi`` band; returns the line."""
    layers = np.arange(len(stats["mean"]))
    source = ColumnDataSource({"layer": layers, "mean": stats["mean"], "lo": stats["lo"], "hi": stats["hi"]})
    fig.varea(x="layer", y1="lo", y2="hi", source=source, fill_color=color, fill_alpha=fill_alpha)
    return fig.line(x="layer", y="mean", source=source, color=color, line_width=2, legend_label=label)


def aggregate_figure(
    results: Sequence[TraceResult],
    group: str = "visual",
    reduce: str = "last",
    effect: str = "indirect",
    spread: str = "std",
    title: str | None = None,
    width: int = 560,
    height: int = 320,
    theme: str = "auto",
):
    """One line per site (mean over traces) with a shaded spread band, x = layer."""
    stats = aggregate(results, group, reduce, effect, spread)
    fig = figure(
        width=width,
        height=height,
        title=title or f"average {effect} effect at the {group} constraint ({reduce} token)",
        x_axis_label="layer",
        y_axis_label=f"{effect} effect",
        tools="pan,box_zoom,reset,save",
    )
    for site, s in stats.items():
        color = SITE_COLORS.get(site, "#555555")
        line = band_curve(fig, s, color, f"{site} (n={s['n']})")
        fig.scatter(x="layer", y="mean", source=line.data_source, color=color, size=5)
        fig.add_tools(
            HoverTool(renderers=[line], tooltips=[("site", site), ("layer", "@layer"), ("mean", "@mean{0.000}")])
        )
    fig.legend.location = "top_left"
    fig.legend.click_policy = "hide"
    return themed(fig, theme)


def cell_curve(result: TraceResult, position: int) -> np.ndarray:
    """The restored probability at ``position`` for every layer, ``[layers]`` (a heatmap row)."""
    if not 0 <= position < result.scores.shape[1]:
        raise IndexError(f"position {position} outside the trace's {result.scores.shape[1]} positions")
    return result.scores[:, position].astype(np.float64)


def layer_curve_figure(
    values: np.ndarray,
    *,
    clean: float | None = None,
    corrupted: float | None = None,
    title: str = "layer curve",
    y_label: str = "p(target)",
    width: int = 420,
    height: int = 260,
    theme: str = "auto",
):
    """A single per-layer curve, with dashed clean / corrupted reference lines when given."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    source = ColumnDataSource({"layer": np.arange(len(values)), "value": values})
    fig = figure(
        width=width, height=height, title=title, x_axis_label="layer", y_axis_label=y_label, tools="save,reset"
    )
    fig.line(x="layer", y="value", source=source, line_width=2, color="#3e4989")
    fig.scatter(x="layer", y="value", source=source, size=6, color="#3e4989")
    fig.add_tools(HoverTool(tooltips=[("layer", "@layer"), ("value", "@value{0.0000}")]))
    for level, color in ((clean, "#1b9e77"), (corrupted, "#d95f02")):
        if level is not None:
            fig.add_layout(Span(location=float(level), dimension="width", line_dash="dashed", line_color=color))
    return themed(fig, theme)


def output_inline() -> None:
    """Show bokeh figures in this notebook with INLINE resources (the default CDN fails offline)."""
    from bokeh.io import output_notebook

    output_notebook(resources=INLINE, hide_banner=True)


def save_html(fig, path: str | Path, title: str = "mllm_lens") -> Path:
    """Write a standalone page (BokehJS inlined, no CDN), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(file_html(fig, INLINE, title), encoding="utf-8")
    return path
