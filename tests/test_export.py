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
    assert g.size == (g.left + 6 * 14 + g.legend, g.top + 6 * 14 + g.bottom) and g.note is None


def test_static_figures_title_both_axes(tmp_path):
    """The layer axis titled under the cells and the token axis over the row labels, as the widget
    draws them (the SVG and PNG exports titled only the layer axis)."""
    result = synthetic()
    assert svg_texts(result.to_svg(tmp_path / "t.svg"), "axis") == ["layer", "token"]
    g = export.grid(result)
    with Image.open(result.to_png(tmp_path / "t.png", scale=1)) as image:
        over_labels = image.convert("L").crop((4, g.top - 20, g.left - 4, g.top - 2))  # left of the panel titles
        assert over_labels.getextrema()[0] < 100


def test_png_text_uses_only_characters_its_font_draws(tmp_path, monkeypatch):
    """The PNG's title lines (“question” → target; the normalised score's definition, with −) are
    drawn in PIL's default font, which has no → or −: they were drawn as empty boxes."""
    from PIL import ImageDraw, ImageFont

    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return real(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    synthetic().to_png(tmp_path / "n.png", value="normalized", scale=1)
    font = ImageFont.load_default(size=10)
    box = bytes(font.getmask("\ue000"))  # a private-use character: what the font draws for a missing glyph
    missing = {ch for text in drawn for ch in text if not ch.isspace() and bytes(font.getmask(ch)) == box}
    assert any(" -> " in text for text in drawn) and not missing, missing


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


def tiny_effect() -> ml.TraceResult:
    """A trace whose restorations move p(answer) by at most 0.006 (clean 0.933, corrupted 0.927)."""
    result = synthetic()
    result.scores = 0.927 + 0.006 * np.random.default_rng(1).random(result.scores.shape)
    result.clean_prob, result.corrupted_prob = 0.933, 0.927
    return result


def svg_texts(path: Path, cls: str) -> list[str]:
    root = ET.parse(path).getroot()
    return [el.text for el in root.iter("{http://www.w3.org/2000/svg}text") if el.get("class") == cls]


def test_a_tiny_effect_is_not_painted_at_full_scale_and_is_said_in_words(tmp_path):
    g = export.grid(tiny_effect())
    assert g.vmin == pytest.approx(0.927) and g.vmax - g.vmin == pytest.approx(export.MIN_SPAN)
    brightest = export.rgb(np.array([np.nanmax(g.values)]), g.vmin, g.vmax)[0]
    assert brightest.astype(int).sum() < 300  # dark end of viridis; the top is (253, 231, 37)
    note = "restoring changes p(answer) by at most 0.006: too small to colour (the scale spans at least 0.05)"
    assert g.note == note
    assert svg_texts(tiny_effect().to_svg(tmp_path / "t.svg"), "note") == [note]
    with Image.open(tiny_effect().to_png(tmp_path / "t.png", scale=1)) as image:
        assert image.size == g.size and g.size[1] == g.top + 6 * 14 + g.bottom + 16


def test_the_colour_bar_ends_at_the_anchored_range_and_marks_clean_and_corrupted(tmp_path):
    g = export.grid(synthetic())  # clean 0.9, corrupted 0.1, scores spread over [0, 1]
    assert (g.vmin, g.vmax) == (0.1, 0.9)
    assert svg_texts(synthetic().to_svg(tmp_path / "a.svg"), "legend-label") == ["0.900 clean", "0.100 corrupted"]
    assert svg_texts(tmp_path / "a.svg", "unit") == ["p(ans</script>)"]
    assert svg_texts(tmp_path / "a.svg", "axis") == ["layer", "token"]
    auto = export.grid(synthetic(), scale="auto")
    finite = auto.values[np.isfinite(auto.values)]
    assert (auto.vmin, auto.vmax) == (finite.min(), finite.max())
    labels = svg_texts(synthetic().to_svg(tmp_path / "b.svg", scale="auto"), "legend-label")
    assert labels == [f"{finite.max():.3f} (clean 0.900)", f"{finite.min():.3f} (corrupted 0.100)"]


@pytest.mark.parametrize(
    ("clean", "corrupted", "options", "expected"),
    [
        (0.9, 0.1, {}, (0.1, 0.9)),
        (0.933, 0.927, {}, (0.927, 0.977)),
        (0.99, 0.98, {}, (0.95, 1.0)),
        (0.9, 0.1, {"value": "indirect_effect"}, (0.0, 0.8)),
        (0.9, 0.1, {"scale": "fixed"}, (0.0, 1.0)),
        (0.9, 0.1, {"scale": "auto", "data": np.array([0.3, np.nan, 0.4])}, (0.3, 0.4)),
        (0.9, 0.1, {"value": "normalized"}, (0.0, 1.0)),
        (0.933, 0.927, {"value": "normalized"}, (0.0, 1.0)),
    ],
)
def test_color_range_follows_the_widgets_policy(clean, corrupted, options, expected):
    assert export.color_range(clean, corrupted, **options) == pytest.approx(expected)


def test_the_policy_constants_match_the_front_end():
    js = (Path(__file__).parent.parent / "js" / "src" / "policy.js").read_text()
    assert float(re.search(r"export const MIN_SPAN = ([\d.]+);", js)[1]) == export.MIN_SPAN
    assert float(re.search(r"export const MIN_GAP = ([\de.-]+);", js)[1]) == export.MIN_GAP
    for name, python in (("POLICIES", export.SCALES), ("VALUES", export.VALUES)):
        block = re.search(rf"export const {name} = {{(.*?)}};", js, re.S)[1]
        assert re.findall(r"^  (\w+): \"", block, re.M) == list(python)


def test_a_normalised_figure_is_anchored_0_to_1_and_says_what_it_paints(tmp_path):
    """ROME's normalised effect (p − corrupted) / (clean − corrupted): corrupted at 0, clean at 1,
    defined in the title; a small clean − corrupted gap is said in words."""
    result = synthetic()  # clean 0.9, corrupted 0.1
    g = export.grid(result, value="normalized")
    assert (g.vmin, g.vmax) == (0.0, 1.0)
    np.testing.assert_allclose(g.values, (export.grid(result).values - 0.1) / 0.8)
    svg = result.to_svg(tmp_path / "n.svg", value="normalized")
    assert svg_texts(svg, "legend-label") == ["1.000 (clean 0.900)", "0.000 (corrupted 0.100)"]
    assert svg_texts(svg, "unit") == ["normalised effect"]
    definition = (
        "normalised = (restored − corrupted) / (clean − corrupted) p(ans</script>): 0 = corrupted, 1 = clean (ROME)"
    )
    assert svg_texts(svg, "heading")[-1] == definition
    assert svg_texts(result.to_svg(tmp_path / "p.svg"), "unit") == ["p(ans</script>)"]  # the default paints p
    assert export.grid(tiny_effect(), value="normalized").note == (
        "clean and corrupted p differ by only 0.006: normalising stretches that small change over the scale"
    )
    page = result.to_html(tmp_path / "n.html", value="normalized").read_text()
    assert '"value": "normalized"' in page
    with pytest.raises(ValueError, match="value must be one of"):
        export.grid(result, value="normalised_typo")


@pytest.mark.parametrize(
    ("clean", "words"),
    [
        (0.5004, "clean and corrupted p differ by only 0.0004 (under 0.001), too little to divide by"),
        (0.5, "clean and corrupted p are equal (0.500)"),
    ],
)
def test_a_normalised_figure_without_a_gap_to_divide_by_says_so_instead_of_a_colour_bar(tmp_path, clean, words):
    """Clean and corrupted p closer than MIN_GAP: (p − corrupted) / gap would paint noise as
    effect, so no cell is painted, the SVG / PNG draw no colour bar and the note says why."""
    result = synthetic()
    result.clean_prob, result.corrupted_prob = clean, 0.5
    g = export.grid(result, value="normalized")
    assert np.isnan(g.values).all() and not g.colour_bar
    assert g.note == f"{words}: no normalised effect is shown; choose probability or indirect effect"
    svg = result.to_svg(tmp_path / "n.svg", value="normalized")
    assert svg_texts(svg, "note") == [g.note] and not svg_texts(svg, "unit") and not svg_texts(svg, "legend-label")
    assert export.grid(result).colour_bar and not np.isnan(export.grid(result).values).all()  # p is still painted
    png = result.to_png(tmp_path / "n.png", value="normalized", scale=1)
    with Image.open(png) as image:  # the colour bar's column is blank: no viridis ramp beside the cells
        bar = np.asarray(image.convert("RGB"))[g.top : g.axis_y, g.legend_x + 2 : g.legend_x + 10]
    assert (bar == 255).all()


def test_the_static_page_promises_no_clicks_and_follows_the_readers_theme(tmp_path):
    page = synthetic().to_html(tmp_path / "trace.html").read_text()
    state = json.loads(re.search(r'<script type="application/json" id="mll-state">(.*?)</script>', page, re.S)[1])
    assert state["clickable"] is False and state["scale"] == "anchored"
    assert "click" not in state["status"] and "running" not in state["status"]
    assert export.PAGE_THEME in page and "prefers-color-scheme: dark" in page


def test_static_figures_are_titled_and_mark_the_corrupted_rows(tmp_path):
    """SVG and PNG carry the widget's title (question → target, corruption, anchors); the rows
    the corruption acted on are marked * (here noise on the phrase "w1")."""
    result = synthetic()
    result.settings["corruption"] = {"kind": "constraint_noise", "constraint": "w1"}
    heading = [
        "“what <b>is</b> this” → 'ans</script>'",
        "corrupted by noise on 'w1' (rows marked *) · clean p 0.900 · corrupted p 0.100",
    ]
    assert svg_texts(result.to_svg(tmp_path / "t.svg"), "heading") == heading
    g = export.grid(result)
    assert g.heading == tuple(heading) and g.top == 2 * export.HEADING_LINE + g.header
    assert [label for label in g.row_labels if label.endswith(" *")] == ["w1 *"]
    with Image.open(result.to_png(tmp_path / "t.png", scale=1)) as image:
        assert image.size == g.size
        assert image.convert("L").crop((10, 2, 200, 2 * export.HEADING_LINE)).getextrema()[0] < 70  # title drawn
    image_noise = synthetic()
    image_noise.settings["corruption"] = {"kind": "image_noise", "patches": None}
    assert export.grid(image_noise).row_labels[1] == "image (9) *"
