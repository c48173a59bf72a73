"""Bokeh figures for a light or a dark page (JupyterLab's Dark theme needs light text and lines).

``theme="light"`` keeps bokeh's defaults; ``"dark"`` takes the colours of bokeh's built-in
``dark_minimal`` theme (backgrounds, text, grid, legend), set on the figure's own models so they
hold in every way of showing it (``show``, ``jupyter_bokeh.BokehModel``, ``save_html``; no
network), and redraws the lines that would vanish on it (:data:`ON_DARK`). ``"auto"`` (the
default of the figures in :mod:`mllm_lens.plots` and of ``LiveAggregate``) reads the theme saved
by JupyterLab / Notebook 7 (Settings > Theme, in the user settings folder): dark when its name
says so. Elsewhere (VS Code, an adaptive "follow the system" setting, a kernel on another
machine) it cannot see the page and draws light: pass ``theme="dark"`` there. In VS Code the
kernel can tell where it runs (``VSCODE_PID`` in its environment) but nothing it can read says
which colour theme the editor shows: only the notebook's outputs see that, as ``--vscode-*`` CSS
variables, which the widgets (:mod:`mllm_lens.widgets`, drawn in the page) follow, while a bokeh
figure is coloured in the kernel. (A JupyterLab theme saved on the same machine is still read
there, so a dark JupyterLab setting makes ``"auto"`` dark in VS Code too.) A figure is themed
when it is made: after a theme switch, run its cell again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bokeh.model import Model
from bokeh.themes import built_in_themes

THEMES = ("auto", "light", "dark")
SETTINGS = Path("@jupyterlab", "apputils-extension", "themes.jupyterlab-settings")
# Line and fill colours of this package's figures that vanish on the dark background, and the
# ones drawn instead (at least 3:1 against it, WCAG's bar for graphics; tested).
ON_DARK = {
    "#000000": "#e0e0e0",  # the last token's role
    "#440154": "#b98fe3",  # the hidden-state site (viridis' dark end)
    "#3e4989": "#7fa7e6",  # a single layer curve
    "#0072b2": "#56b4e9",  # the textual constraint's role (Okabe-Ito blue -> sky blue)
    "#555555": "#b0b0b0",  # an unnamed site or role
}
PAINT = ("line_color", "fill_color", "hatch_color")


def settings_dir() -> Path:
    """JupyterLab's user settings folder (as ``jupyter lab paths`` reports it)."""
    folder = os.environ.get("JUPYTERLAB_SETTINGS_DIR")
    if folder:
        return Path(folder)
    config = os.environ.get("JUPYTER_CONFIG_DIR") or Path.home() / ".jupyter"
    return Path(config) / "lab" / "user-settings"


def jupyter_theme() -> str | None:
    """The theme JupyterLab / Notebook 7 saved ("JupyterLab Dark"), or None when none was saved."""
    try:
        text = (settings_dir() / SETTINGS).read_text(encoding="utf-8")
    except OSError:
        return None
    text = re.sub(r"/\*.*?\*/|^\s*//[^\n]*", "", text, flags=re.S | re.M)  # the file is JSON5: drop comments
    match = re.search(r'"theme"\s*:\s*"([^"]*)"', text)
    return match[1] if match else None


def resolve(theme: str = "auto") -> str:
    """``"light"`` or ``"dark"``: ``theme`` itself, or for ``"auto"`` the saved JupyterLab theme's."""
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {THEMES}, got {theme!r}")
    if theme == "auto":
        return "dark" if "dark" in (jupyter_theme() or "").lower() else "light"
    return theme


def themed(root: Model, theme: str = "auto") -> Model:
    """``root`` (a figure or layout) drawn for a ``theme`` page (:func:`resolve`); returns it."""
    if resolve(theme) == "light":
        return root
    dark = built_in_themes["dark_minimal"]
    for model in root.references():
        dark.apply_to_model(model)
        colours = {k: v for k, v in (model.themed_values() or {}).items() if k.endswith(("_color", "_alpha"))}
        model.unapply_theme()
        model.update(**colours)
        for name in PAINT:
            value = getattr(model, name, None)
            if isinstance(value, str) and value.lower() in ON_DARK:
                setattr(model, name, ON_DARK[value.lower()])
    return root
