"""Bokeh figures under a dark page: readable text and lines, and "auto" reading JupyterLab's theme."""

from __future__ import annotations

import pytest
from bokeh.models import Axis, GlyphRenderer, Legend, Span, Title
from test_plots import synthetic

from mllm_lens import plot_theme, plots
from mllm_lens.experiments.report import ROLE_COLORS
from mllm_lens.widgets import LiveAggregate


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours."""

    def luminance(colour: str) -> float:
        channels = [int(colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def dark_figures() -> dict:
    results = [synthetic(site, seed=seed) for site in ("hidden", "mlp", "attn") for seed in range(2)]
    return {
        "aggregate": plots.aggregate_figure(results, theme="dark"),
        "curve": plots.layer_curve_figure([0.1, 0.5], clean=0.9, corrupted=0.1, theme="dark"),
        "live": LiveAggregate(layers=4, theme="dark").figure,
    }


def save_theme(folder, text: str) -> None:
    path = folder / plot_theme.SETTINGS
    path.parent.mkdir(parents=True)
    path.write_text(text)


@pytest.mark.parametrize("name", ["aggregate", "curve", "live"])
def test_dark_figures_have_readable_text_and_lines(name):
    """Text meets WCAG AA (4.5:1) on the dark background, lines and bands the 3:1 of graphics
    (bokeh's defaults, and the black last-token line, vanish on it)."""
    fig = dark_figures()[name]
    page, frame = fig.border_fill_color, fig.background_fill_color
    assert contrast(page, "#ffffff") > 10 and contrast(frame, "#ffffff") > 10  # dark, not bokeh's white
    texts = [t.text_color for t in fig.references() if isinstance(t, Title) and t.text]
    texts += [
        c for a in fig.references() if isinstance(a, Axis) for c in (a.axis_label_text_color, a.major_label_text_color)
    ]
    texts += [legend.label_text_color for legend in fig.references() if isinstance(legend, Legend)]
    assert texts and all(contrast(c, page) >= 4.5 for c in texts), texts
    lines = [
        r.glyph.line_color for r in fig.renderers if isinstance(r, GlyphRenderer) and hasattr(r.glyph, "line_color")
    ]
    lines += [r.glyph.fill_color for r in fig.renderers if type(r.glyph).__name__ == "VArea"]
    lines += [s.line_color for s in fig.references() if isinstance(s, Span)]
    assert lines and all(contrast(c, frame) >= 3 for c in lines), {c: round(contrast(c, frame), 2) for c in lines}


def test_every_palette_colour_reads_on_the_dark_background():
    frame = "#20262B"  # dark_minimal's plot background
    colours = {*plots.SITE_COLORS.values(), *ROLE_COLORS.values(), "#555555", "#3e4989"}
    shown = {c: plot_theme.ON_DARK.get(c, c) for c in colours}
    assert all(contrast(c, frame) >= 3 for c in shown.values()), {
        c: round(contrast(c, frame), 2) for c in shown.values()
    }


def test_auto_follows_the_theme_jupyterlab_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    assert plot_theme.jupyter_theme() is None and plot_theme.resolve() == "light"  # never switched: Light
    save_theme(tmp_path, '{\n    // "theme": "JupyterLab Light",\n    "theme": "JupyterLab Dark"\n}')
    assert plot_theme.jupyter_theme() == "JupyterLab Dark" and plot_theme.resolve("auto") == "dark"
    assert plots.layer_curve_figure([0.2, 0.4]).background_fill_color == "#20262B"
    assert plot_theme.resolve("light") == "light"
    (tmp_path / plot_theme.SETTINGS).write_text('{"theme-scrollbars": true, "theme": "JupyterLab Light"}')
    assert plot_theme.resolve() == "light" and plots.layer_curve_figure([0.2]).background_fill_color == "#ffffff"
    with pytest.raises(ValueError, match="theme must be one of"):
        plot_theme.resolve("midnight")


def test_the_settings_folder_is_jupyterlabs(tmp_path, monkeypatch):
    monkeypatch.delenv("JUPYTERLAB_SETTINGS_DIR", raising=False)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    assert plot_theme.settings_dir() == tmp_path / "lab" / "user-settings"
