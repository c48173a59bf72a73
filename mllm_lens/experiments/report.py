"""Bokeh figures of a run's aggregates and the self-contained HTML report of ``mllm-lens summarize``."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from mllm_lens.errors import MissingExtraError
from mllm_lens.experiments.results import Run

ROLE_COLORS = {  # Okabe-Ito: distinguishable with colour-vision deficiencies
    "visual": "#d55e00",
    "textual": "#0072b2",
    "last": "#000000",
    "text": "#999999",
    "image_early": "#cc79a7",
    "image_late": "#009e73",
}
ROLE_NAMES = {
    "visual": "visual constraint",
    "textual": "textual constraint",
    "last": "last token",
    "text": "other text",
    "image_early": "image tokens, first half",
    "image_late": "image tokens, second half",
}


def _bokeh():
    """bokeh, or a clear install hint (it comes with the widgets extra)."""
    try:
        import bokeh.plotting
    except ImportError:
        raise MissingExtraError("run figures and reports need bokeh: pip install 'mllm-lens[widgets]'") from None
    return bokeh


def _finish(fig, layers: int) -> None:
    """Whole-layer ticks, and the legend beside the plot (it never hides a curve)."""
    if layers <= 40:
        fig.xaxis.ticker = list(range(layers))
    fig.legend.click_policy = "hide"
    fig.legend.label_text_font_size = "8pt"
    fig.add_layout(fig.legend[0], "right")


def role_figure(profiles: dict[str, dict], title: str, width: int = 640, height: int = 300):
    """One line per token role (mean effect per layer) with its 95 % band."""
    _bokeh()
    from bokeh.models import HoverTool
    from bokeh.plotting import figure

    from mllm_lens.plots import band_curve

    fig = figure(
        width=width,
        height=height,
        title=title,
        x_axis_label="layer",
        y_axis_label="mean indirect effect",
        tools="pan,box_zoom,reset,save",
    )
    for role, stats in profiles.items():
        label = f"{ROLE_NAMES.get(role, role)} (n={stats['n']})"
        line = band_curve(fig, stats, ROLE_COLORS.get(role, "#555555"), label, fill_alpha=0.15)
        fig.add_tools(
            HoverTool(renderers=[line], tooltips=[("role", role), ("layer", "@layer"), ("mean", "@mean{0.0000}")])
        )
    _finish(fig, max(len(stats["mean"]) for stats in profiles.values()))
    return fig


def compare_figure(first: dict, second: dict, role: str, names: tuple[str, str], title: str):
    """The paper's side-by-side: one role's mean effect per layer for two runs (x = relative depth
    when their layer counts differ)."""
    _bokeh()
    from bokeh.plotting import figure

    relative = len(first[role]["mean"]) != len(second[role]["mean"])
    fig = figure(
        width=640,
        height=300,
        title=title,
        x_axis_label="relative depth" if relative else "layer",
        y_axis_label="mean indirect effect",
        tools="pan,box_zoom,reset,save",
    )
    for stats, name, color in ((first[role], names[0], "#d55e00"), (second[role], names[1], "#0072b2")):
        n = len(stats["mean"])
        x = np.arange(n, dtype=np.float64) / (max(n - 1, 1) if relative else 1)
        fig.varea(x=x, y1=stats["lo"], y2=stats["hi"], fill_color=color, fill_alpha=0.15)
        fig.line(x=x, y=stats["mean"], color=color, line_width=2, legend_label=f"{name} (n={stats['n']})")
    if relative:
        fig.legend.click_policy = "hide"
        fig.add_layout(fig.legend[0], "right")
    else:
        _finish(fig, len(first[role]["mean"]))
    return fig


def patch_figure(grid: dict[str, Any]):
    """The mean per-patch effect at the layer where it is largest, on the image's patch grid."""
    _bokeh()
    from bokeh.models import ColorBar, LinearColorMapper, Range1d  # type: ignore[attr-defined]
    from bokeh.plotting import figure

    mean = grid["mean"]
    layer = int(np.argmax(mean.reshape(mean.shape[0], -1).max(axis=1)))
    values = mean[layer]
    rows, cols = values.shape
    mapper = LinearColorMapper(palette="Viridis256", low=min(0.0, float(values.min())), high=float(values.max()) or 1.0)
    fig = figure(
        width=360,
        height=340,
        title=f"mean per-patch effect, layer {layer} (n={grid['n']})",
        x_range=Range1d(start=0, end=cols),
        y_range=Range1d(start=rows, end=0),
        tools="save",
        toolbar_location=None,
    )
    fig.image(image=[values], x=0, y=0, dw=cols, dh=rows, color_mapper=mapper)  # row 0 on top (inverted y)
    fig.add_layout(ColorBar(color_mapper=mapper, title="indirect effect"), "right")
    fig.xaxis.axis_label, fig.yaxis.axis_label = "patch column", "patch row"
    return fig


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='mllm'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _windows(run: Run, table) -> list[int]:
    traces = table[table["analysis"] == "trace"]
    return sorted(int(w) for w in traces["window"].dropna().unique()) if not traces.empty else []


def report_layout(run: Run, compare: Run | None = None):
    """Figures and tables of a run (and the comparison with another) as one bokeh layout."""
    _bokeh()
    from bokeh.layouts import column, row
    from bokeh.models import Div  # type: ignore[attr-defined]

    from mllm_lens.experiments import aggregate

    table = run.table()
    parts: list[Any] = [Div(text=f"<h1>mllm_lens run</h1><p>{html.escape(str(run.path))}</p>")]
    counts = table.groupby("status")["example_id"].nunique().to_dict() if not table.empty else {}
    parts.append(
        Div(
            text=f"<p>{table['example_id'].nunique() if not table.empty else 0} examples stored "
            f"({counts.get('ok', 0)} with results, {counts.get('error', 0)} with an error), "
            f"{len(run.report.get('skipped', []))} rows of the dataset skipped.</p>"
        )
    )
    other = compare.table() if compare is not None else None
    for window in _windows(run, table):
        figures = []
        for site in run.settings.get("sites", []):
            profiles = aggregate.role_profiles(table, site, window)
            if profiles:
                figures.append(role_figure(profiles, f"{site}, window {window}: mean indirect effect by token role"))
            if other is not None:
                theirs = aggregate.role_profiles(other, site, window)
                if "visual" in profiles and "visual" in theirs:
                    names = (str(run.settings.get("model")), str(compare.settings.get("model")))  # type: ignore[union-attr]
                    if names[0] == names[1]:
                        names = (run.path.name, compare.path.name)  # type: ignore[union-attr]
                    figures.append(
                        compare_figure(profiles, theirs, "visual", names, f"{site}, window {window}: visual constraint")
                    )
        if figures:
            parts.append(column(*[row(*figures[i : i + 2]) for i in range(0, len(figures), 2)]))
    grid = aggregate.patch_grid(table)
    if grid is not None:
        parts.append(patch_figure(grid))
    flows = aggregate.flow_table(table)
    if flows["n"]:
        rows = [[f"flow, layer {i}", v] for i, v in enumerate(flows["layer_auroc"])]
        rows.append(["confidence (max probability)", flows["confidence_auroc"]])
        parts.append(
            Div(
                text="<h2>Predicting a correct answer</h2>"
                f"<p>AUROC over {flows['n']} examples, {flows['n_correct']} answered correctly"
                f"{'' if 0 < flows['n_correct'] < flows['n'] else ' (n/a: AUROC needs correct and wrong answers)'}.</p>"
                + _table(rows, ["predictor", "AUROC"])
            )
        )
    failures = run.failures() if not table.empty else None
    if failures is not None and len(failures):
        parts.append(Div(text="<h2>Failures</h2>" + _table(failures.values.tolist(), ["example", "analysis", "error"])))
    skipped = run.report.get("skipped", [])
    if skipped:
        parts.append(
            Div(
                text="<h2>Skipped rows</h2>"
                + _table([[s["example_id"], s["reason"]] for s in skipped], ["row", "reason"])
            )
        )
    settings = [[k, v] for k, v in sorted(run.settings.items())]
    parts.append(Div(text="<h2>Settings</h2>" + _table(settings, ["setting", "value"])))
    return column(*parts)


STYLE = (
    "<style>table.mllm{border-collapse:collapse;font:12px sans-serif}"
    "table.mllm td,table.mllm th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>"
)


def write_report(run: Run, out: str | Path, compare: Run | None = None) -> Path:
    """A self-contained HTML report (BokehJS inlined: opens offline, without a kernel)."""
    _bokeh()
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from mllm_lens.io import atomic_path

    page = file_html(report_layout(run, compare), INLINE, title=f"mllm_lens run {run.path.name}")
    page = page.replace("</head>", STYLE + "</head>", 1)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(out)
