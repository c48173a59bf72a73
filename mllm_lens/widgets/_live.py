"""A live aggregate of a dataset run: the per-role mean effect, redrawn as shards land."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bokeh.models import ColumnDataSource, Title  # type: ignore[attr-defined]  # exported lazily
from bokeh.plotting import figure
from jupyter_bokeh import BokehModel

from mllm_lens.experiments import aggregate, open_run
from mllm_lens.experiments.compute import ROLES
from mllm_lens.experiments.report import ROLE_COLORS, ROLE_NAMES
from mllm_lens.plot_theme import themed


class LiveAggregate:
    """Mean indirect effect per layer and token role of a run, updated in place.

    Display ``.widget`` in a cell, then pass ``on_flush=live.update`` to :func:`mllm_lens.run`
    (or call ``live.update(run_folder)`` yourself, e.g. while another process writes the run).
    ``theme`` ("auto", "light", "dark") draws it for the page (:mod:`mllm_lens.plot_theme`)::

        live = LiveAggregate(site="mlp", layers=model.num_layers)
        display(live.widget)
        ml.run(model, data, "runs/demo", settings, on_flush=live.update)
    """

    def __init__(self, site: str = "mlp", window: int | None = None, layers: int = 1, theme: str = "auto") -> None:
        self.site, self.window = site, window
        self.title = Title(text=f"{site}: mean indirect effect by token role (waiting for the first results)")
        self.figure = figure(
            width=560,
            height=320,
            title=self.title,
            x_axis_label="layer",
            y_axis_label="mean indirect effect",
            tools="pan,box_zoom,reset,save",
        )
        empty = np.zeros(layers)
        self.sources: dict[str, ColumnDataSource] = {}
        for role in ROLES:
            source = ColumnDataSource({"layer": np.arange(layers), "mean": empty, "lo": empty, "hi": empty})
            color = ROLE_COLORS[role]
            self.figure.varea(x="layer", y1="lo", y2="hi", source=source, fill_color=color, fill_alpha=0.15)
            self.figure.line(
                x="layer", y="mean", source=source, color=color, line_width=2, legend_label=ROLE_NAMES[role]
            )
            self.sources[role] = source
        self.figure.legend.label_text_font_size = "8pt"
        self.figure.legend.click_policy = "hide"
        self.widget = BokehModel(themed(self.figure, theme))
        self.examples = 0

    def update(self, run_folder: str | Path) -> None:
        """Re-read the run and redraw every role's curve and band."""
        profiles = aggregate.role_profiles(open_run(run_folder).table(), self.site, self.window)
        for role, stats in profiles.items():
            layers = np.arange(len(stats["mean"]))
            self.sources[role].data = {"layer": layers, "mean": stats["mean"], "lo": stats["lo"], "hi": stats["hi"]}
        self.examples = max((s["n"] for s in profiles.values()), default=0)
        self.title.text = f"{self.site}: mean indirect effect by token role ({self.examples} examples so far)"
