"""Static exports round trip: HTML (data + inlined bundle), SVG (one rect per cell), PNG (size)."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mllm_lens as ml
from mllm_lens import export


def synthetic(site: str = "mlp", layers: int = 6, text: int = 5, grid: int = 3, seed: int = 0) -> ml.TraceResult:
    """A trace of a prompt `<s> <img r,c>... w0..w{text-2}` with random scores (no model needed)."""
    rng = np.random.default_rng(seed)
    labels = ["<s>", *[f"<img {r},{c}>" for r in range(grid) for c in range(grid)], *[f"w{i}" for i in range(text - 1)]]
    scores = rng.random((layers, len(labels)))
    scores[:, 0] = np.nan
    return ml.TraceResult(
        scores=scores,
        clean_prob=0.9,
        corrupted_prob=0.1,
        target_id=3,
        target_token="ans</script>",
        labels=labels,
        tokens=labels,
        constraint_spans={"w1": (grid * grid + 2, grid * grid + 3)},
        constraint_kinds={"w1": "visual"},
        image_span=(1, 1 + grid * grid),
        patch_grid=(grid, grid),
        site=site,
        settings={"question": "what <b>is</b> this"},
    )


def test_html_holds_the_data_and_the_inlined_bundle(tmp_path):
    result = synthetic()
    page = result.to_html(tmp_path / "trace.html").read_text()
    state = json.loads(re.search(r'<script type="application/json" id="mll-state">(.*?)</script>', page, re.S)[1])
    scores = np.frombuffer(base64.b64decode(state["scores"]["b64"]), np.float32).reshape(state["scores"]["shape"])
    np.testing.assert_array_equal(scores[0], result.scores.astype(np.float32))
    assert state["labels"] == result.labels and state["target_token"] == "ans</script>"
    assert export.bundle_text().replace("</script", "<\\/script")[:2000] in page
    assert "globalThis.mllmLensWidgets" in page and "mllmLensWidgets" in export.bundle_text()
    assert page.count("</script>") == 3 and "<b>is</b>" not in page
    assert not re.search(r"<script[^>]+src=", page) and "http" not in page.split("<script", 1)[0]


def test_svg_parses_with_one_rect_per_cell(tmp_path):
    result = synthetic(layers=6, text=5, grid=3)
    collapsed = ET.parse(result.to_svg(tmp_path / "c.svg")).getroot()
    cells = [el for el in collapsed.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "cell"]
    assert len(cells) == 6 * (1 + 1 + 4)  # <s>, the image band, 4 words
    expanded = ET.parse(result.to_svg(tmp_path / "e.svg", collapse_image=False)).getroot()
    cells = [el for el in expanded.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "cell"]
    assert len(cells) == result.scores.size
    assert cells[0].get("fill") == "rgb(220, 220, 220)"  # NaN (unswept) cells are grey
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.svg", "e.svg"]  # atomic: no temp files left


def test_svg_of_several_sites_draws_panels_side_by_side(tmp_path):
    results = [synthetic(site) for site in ("hidden", "mlp", "attn")]
    root = ET.parse(export.to_svg(results, tmp_path / "all.svg")).getroot()
    cells = [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "cell"]
    assert len(cells) == 3 * 6 * 6
    texts = [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"hidden state", "MLP", "attention"} <= set(texts)


def test_png_has_the_layout_size(tmp_path):
    result = synthetic()
    g = export.grid(result)
    with Image.open(result.to_png(tmp_path / "t.png", scale=2)) as image:
        assert image.size == (2 * g.size[0], 2 * g.size[1])
        assert image.getpixel((2 * g.left + 4, 2 * g.top + 4)) == (220, 220, 220)  # the NaN <s> row
    assert g.size == (g.left + 6 * 14 + 70, 26 + 6 * 14 + 22)


def test_colour_band_value_is_the_best_image_score():
    result = synthetic()
    g = export.grid(result)
    np.testing.assert_allclose(g.values[0, :, 1], result.scores[:, 1:10].max(1))


def test_colormap_matches_the_front_end_table():
    js = (Path(__file__).parent.parent / "js" / "src" / "colormap.js").read_text()
    for name, stops in export.COLORMAPS.items():
        block = re.search(name + r": \[\n(.*?)\n  \],", js, re.S)[1]
        assert [tuple(map(int, t)) for t in re.findall(r"\[(\d+), (\d+), (\d+)\]", block)] == stops
    assert tuple(export.rgb(np.array([0.0, 1.0]), 0, 1)[1]) == (253, 231, 37)


def test_mismatched_traces_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share their prompt"):
        export.to_svg([synthetic(), synthetic(layers=4)], tmp_path / "x.svg")
    assert not list(tmp_path.iterdir())
