"""Bokeh figures: the averaged per-layer curves, single layer curves, offline HTML."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.models import GlyphRenderer

import mllm_lens as ml
from mllm_lens import plots


def synthetic(site: str = "mlp", layers: int = 6, seed: int = 0) -> ml.TraceResult:
    """A random trace of `<s> <img 0,0>..<img 2,2> w0..w3`; the visual constraint is w1 (position 11)."""
    labels = ["<s>", *[f"<img {r},{c}>" for r in range(3) for c in range(3)], "w0", "w1", "w2", "w3"]
    scores = np.random.default_rng(seed).random((layers, len(labels)))
    return ml.TraceResult(
        scores, 0.9, 0.1, 3, "ans", labels, labels, {"w1": (11, 12)}, {"w1": "visual"}, (1, 10), (3, 3), site
    )


def test_layer_profile_reads_the_constraint_positions():
    result = synthetic()
    np.testing.assert_allclose(plots.layer_profile(result, "visual"), result.indirect_effect[:, 11])
    np.testing.assert_allclose(plots.layer_profile(result, "image", "max", "score"), result.scores[:, 1:10].max(1))
    np.testing.assert_allclose(
        plots.layer_profile(result, "last", effect="normalized"), result.normalized_effect[:, -1]
    )
    with pytest.raises(ValueError, match="no positions"):
        plots.layer_profile(result, "textual")
    with pytest.raises(ValueError, match="reduce"):
        plots.layer_profile(result, "visual", "median")


def test_aggregate_is_mean_and_spread_per_site():
    results = [synthetic(site, seed=seed) for site in ("mlp", "attn") for seed in range(4)]
    stats = plots.aggregate(results, group="visual")
    mlp = np.stack([r.indirect_effect[:, 11] for r in results[:4]])
    np.testing.assert_allclose(stats["mlp"]["mean"], mlp.mean(0))
    np.testing.assert_allclose(stats["mlp"]["hi"] - stats["mlp"]["mean"], mlp.std(0))
    assert stats["attn"]["n"] == 4
    iqr = plots.aggregate(results, spread="iqr")["mlp"]
    np.testing.assert_allclose(iqr["lo"], np.percentile(mlp, 25, axis=0))


def test_aggregate_refuses_mixed_layer_counts():
    with pytest.raises(ValueError, match="different layer counts"):
        plots.aggregate([synthetic(layers=6), synthetic(layers=4)])


def test_aggregate_figure_draws_a_band_and_a_line_per_site():
    results = [synthetic(site, seed=seed) for site in ("hidden", "mlp", "attn") for seed in range(3)]
    fig = plots.aggregate_figure(results)
    glyphs = [type(r.glyph).__name__ for r in fig.renderers if isinstance(r, GlyphRenderer)]
    assert glyphs.count("VArea") == 3 and glyphs.count("Line") == 3
    assert [item.label["value"] for item in fig.legend.items] == ["hidden (n=3)", "mlp (n=3)", "attn (n=3)"]


def test_layer_curve_figure_and_offline_html(tmp_path):
    result = synthetic()
    fig = plots.layer_curve_figure(plots.cell_curve(result, 11), clean=0.9, corrupted=0.1, title="cell")
    line = next(r for r in fig.renderers if type(r.glyph).__name__ == "Line")
    np.testing.assert_allclose(line.data_source.data["value"], result.scores[:, 11])
    page = plots.save_html(fig, tmp_path / "curve.html").read_text()
    assert "cdn.bokeh.org" not in page and "Bokeh" in page
    with pytest.raises(IndexError):
        plots.cell_curve(result, 99)
