"""End to end in a real browser: the widgets in JupyterLab and Notebook 7, and the HTML export.

A notebook traces the planted-fact model and shows TraceHeatmap and PatchOverlay; the test
runs all cells, clicks a heatmap cell (then Enter on a neighbour), clicks an image patch, and
checks both the widgets' result panels and a kernel-side counter printed by a re-run cell.
A second notebook shows the Explorer on the shipped demo model: pick an example, mark tokens,
run, edit, undo, upload, and send it malformed requests.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mllm_lens as ml
from mllm_lens.testing.patience import patient

SCREENSHOTS = Path(__file__).parent / "screenshots"

SETUP = """\
import numpy as np
import mllm_lens as ml
from mllm_lens.testing.planted import planted_fact_model
from mllm_lens.widgets import PatchOverlay, TraceHeatmap, patch_curve

pf = planted_fact_model(2)
session = ml.TraceSession(pf.model, pf.probe("e0"), ml.noise("e0"))
hm = TraceHeatmap(session)
hm.run()
hm.wait(120)
hm"""
OVERLAY = """\
image_session = ml.TraceSession(pf.model, pf.probe("e0"), ml.image_noise(), sites=("hidden",))
image_trace = image_session.trace("hidden", progress=False)
ov = PatchOverlay.from_trace(image_trace, image_session.encoded.probe.image, patch_curve(image_session))
hm.link(ov)
ov"""
COUNTER = """\
hm.wait(120)
window = hm.results["mlp"].settings["window"]
print(f"COUNTS cells={hm.clicks_done} patches={ov.clicks_done} runs={len(hm.outcomes)} window={window}")"""
BIG = """\
from IPython.display import display
display(PatchOverlay.from_trace(image_trace, image_session.encoded.probe.image))  # no on_patch: clicks only select
labels = ["<s>", *[f"<img {i // 24},{i % 24}>" for i in range(600)], *[f"w{i}" for i in range(19)]]
big = ml.TraceResult(np.random.default_rng(0).random((32, 620)), 0.9, 0.1, 0, "x", labels, labels, {}, {},
                     (1, 601), (24, 24), "mlp")
TraceHeatmap(big)"""
BOKEH = """\
from bokeh.io import show
from mllm_lens import plot_theme, plots
plots.output_inline()
print("bokeh theme", plot_theme.resolve())  # "auto": the theme JupyterLab saved
show(plots.layer_curve_figure(plots.cell_curve(hm.results["mlp"], 19), clean=hm.clean_prob, title="bokeh curve"))"""


# WCAG contrast of an element's text (or of `colour`) against the first opaque background behind it.
CONTRAST = """([el, colour]) => {
  const rgba = (c) => {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillStyle = c;
    const v = ctx.fillStyle;
    if (v.startsWith("#")) return [1, 3, 5].map((i) => parseInt(v.slice(i, i + 2), 16)).concat(1);
    const m = v.match(/[\\d.]+/g).map(Number);
    return [m[0], m[1], m[2], m[3] ?? 1];
  };
  let bg = [255, 255, 255, 1];
  for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
    const c = rgba(getComputedStyle(node).backgroundColor);
    if (c[3] > 0) { bg = c; break; }
  }
  const [r, g, b, a] = rgba(colour ?? getComputedStyle(el).color);
  const fg = [r, g, b].map((v, i) => v * a + bg[i] * (1 - a));
  const lum = (c) => {
    const [R, G, B] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * R + 0.7152 * G + 0.0722 * B;
  };
  const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}"""


def contrasts(root) -> dict:
    """Contrast of the widget's title, muted text, readout and canvas labels against the page."""
    canvas = root.locator("[data-testid=heatmap-canvas]")
    parts = {"title": root.locator(".mll-title").first, "muted": root.locator(".mll-muted").first,
             "readout": root.locator("[data-testid=readout]")}  # fmt: skip
    out = {name: parts[name].evaluate(f"el => ({CONTRAST})([el, null])") for name in parts}
    out["labels"] = canvas.evaluate(f"el => ({CONTRAST})([el, el.dataset.labelColor])")
    return out


EXPLORER = """\
import mllm_lens as ml
from mllm_lens.widgets import Explorer

explorer = Explorer(ml.load("demo"))
explorer"""
EXPLORER_COUNTER = (
    'print(f"EXPLORER runs={explorer.controls.runs_done} edits={len(explorer.edits)} errors={len(explorer.errors)}")'
)


def notebook(*sources: str) -> str:
    cells = [
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s} for s in sources
    ]
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.dumps({"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5})


def run_all(page, server, name: str) -> None:
    """Wait for the notebook's kernel to be idle (accepting a kernel dialog if one shows), then Run > Run All Cells."""
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    deadline, idle_since = time.monotonic() + patient(90_000) / 1000, None
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog button.jp-mod-accept")
        if dialog.count():
            dialog.first.click()
            idle_since = None
        sessions = json.loads(server.get("/api/sessions"))
        idle = any(s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle" for s in sessions)
        idle_since = (idle_since or time.monotonic()) if idle else None
        if idle_since and time.monotonic() - idle_since > 1.0:  # a late kernel dialog would have shown by now
            break
        page.wait_for_timeout(250)
    else:
        raise TimeoutError(f"the kernel of {name} did not become idle within {patient(90_000) / 1000:.0f} s")
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def output_of(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()


def rerun_cell(page, index: int) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def exercise(page, name: str) -> dict:
    """Click a heatmap cell, Enter on its neighbour, click a patch; return timings."""
    heatmap = page.locator("[data-testid=trace-heatmap]").first
    heatmap.wait_for(timeout=patient(120_000))
    canvas = heatmap.locator("[data-testid=heatmap-canvas]")
    page.wait_for_function(
        "el => el.mllCellBox && el.mllCellBox(1, 2, 19)", arg=canvas.element_handle(), timeout=patient(60_000)
    )
    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea", has_text="COUNTS").wait_for(
        timeout=patient(60_000)
    )
    assert "COUNTS cells=0 patches=0 runs=0" in output_of(page, 2)
    bokeh = page.locator(".jp-Notebook .jp-Cell").nth(4).locator(".bk-Canvas, .bk-Figure, canvas").first
    bokeh.wait_for()  # BokehJS inlined: renders with no network; also: every cell has run
    assert bokeh.bounding_box()["width"] > 100 and "bokeh theme light" in output_of(page, 4)
    result = heatmap.locator("[data-testid=cell-result]")
    assert result.inner_text().strip() == ""

    box = canvas.evaluate("el => el.mllCellBox(1, 2, 19)")  # MLP panel, layer 2, the entity token
    started = time.monotonic()
    canvas.click(position={"x": box["x"] + box["w"] / 2, "y": box["y"] + box["h"] / 2})
    result.get_by_text("run #1").wait_for()
    cell_ms = 1000 * (time.monotonic() - started)
    in_page = [float(heatmap.get_attribute("data-click-ms"))]  # click -> result as the page saw it
    text = result.inner_text()
    assert "MLP restored at layer 2" in text or "mlp restored at layer 2" in text
    assert "(pos 19)" in text
    readout = heatmap.locator("[data-testid=readout]").inner_text()  # the readout names the result's cell
    assert readout.startswith("MLP · layer 2 ·") and "(pos 19)" in readout and "running" not in readout
    row_curve = heatmap.get_by_test_id("row-curve")  # the clicked row over the layers, from the scores
    assert "per layer at" in row_curve.inner_text() and row_curve.locator("circle").count() == 5

    page.keyboard.press("ArrowUp")  # keyboard: move to position 18, Enter restores it
    page.keyboard.press("Enter")
    result.get_by_text("run #2").wait_for()
    assert "(pos 18)" in result.inner_text()
    in_page.append(float(heatmap.get_attribute("data-click-ms")))

    overlay = page.locator("[data-testid=patch-overlay]").first
    image = overlay.locator("[data-testid=overlay-canvas]")
    size = image.bounding_box()
    started = time.monotonic()
    image.click(position={"x": size["width"] * 2.5 / 4, "y": size["height"] * 1.5 / 4})  # patch (1, 2)
    patch = overlay.locator("[data-testid=patch-result]")
    patch.get_by_text("1 patch (1,2)").wait_for()
    patch_ms = 1000 * (time.monotonic() - started)
    page_patch_ms = float(overlay.get_attribute("data-click-ms"))
    assert overlay.locator("[data-testid=curve]").bounding_box()["width"] > 0
    assert overlay.locator("[data-testid=error]").is_hidden() and heatmap.locator("[data-testid=error]").is_hidden()
    check_overlay_legibility(overlay)

    rerun_cell(page, 2)
    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea", has_text="cells=2").wait_for()
    assert "COUNTS cells=2 patches=1 runs=2 window=1" in output_of(page, 2)
    window = heatmap.get_by_test_id("window-input")  # a new window re-traces in the kernel
    assert window.get_attribute("max") == "2"  # the paper's window w restores 2w + 1 of 5 layers
    check_window_refusal(heatmap, window)
    window.fill("2")
    window.press("Tab")
    rerun_cell(page, 2)
    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea", has_text="window=2").wait_for()
    assert heatmap.get_by_test_id("window-error").is_hidden() and window.get_attribute("aria-invalid") == "false"
    check_site_control(page, heatmap)

    check_clicks_without_a_kernel_job(page)
    big = page.locator("[data-testid=trace-heatmap]").nth(1)
    big.wait_for()
    collapsed_ms = float(big.get_attribute("data-render-ms"))
    big.locator("[data-testid=toggle-image]").click()
    page.wait_for_function("el => el.dataset.cells === String(32 * 620)", arg=big.element_handle())
    expanded_ms = float(big.get_attribute("data-render-ms"))
    heatmap.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
    overlay.screenshot(path=str(SCREENSHOTS / f"{name}_overlay.png"))
    big.screenshot(path=str(SCREENSHOTS / f"{name}_big.png"))
    dark_ms = check_dark_theme(page, heatmap, overlay, big) if name == "lab" else None
    ours = [e for e in page.errors if "blob:" in e or "mll" in e]  # the Jupyter front ends log their own errors
    assert not ours, ours
    return {
        "cell_click_ms": cell_ms,  # with Playwright's own round trips
        "patch_click_ms": patch_ms,
        "page_cell_click_ms": max(in_page),  # the slower of the two cell runs, timed in the page
        "page_patch_click_ms": page_patch_ms,
        "render_ms": collapsed_ms,
        "expanded_ms": expanded_ms,
    } | ({"expanded_dark_ms": dark_ms} if dark_ms is not None else {})


def check_window_refusal(heatmap, window) -> None:
    """A window the model cannot take is refused in words beside its input (not at the top of the
    widget), the engine's exception in a collapsed "details" toggle; nothing is re-traced."""
    window.fill("9")
    window.press("Tab")
    refusal = heatmap.get_by_test_id("window-error")
    refusal.get_by_text("Window 9 restores 19 layers, more than this model's 5: choose 1 to 2.").wait_for()
    assert heatmap.get_by_test_id("error").is_hidden() and window.get_attribute("aria-invalid") == "true"
    field, box = window.bounding_box(), refusal.bounding_box()
    assert box["x"] >= field["x"] + field["width"]  # right of the input, on its row
    assert box["y"] < field["y"] + field["height"] and box["y"] + box["height"] > field["y"]
    details = heatmap.get_by_test_id("window-error-details")
    assert details.is_hidden()
    refusal.locator("summary").click()
    assert details.inner_text().startswith("TraceConfigError: window 9 (paper convention: 19 layers)")
    assert heatmap.get_by_test_id("status").inner_text() == ""  # no trace started


def check_site_control(page, heatmap) -> None:
    """The site select shows one site's panel, then all three again (finished at this window:
    no re-trace), and clears the answer panel that belonged to the old panels."""
    site = heatmap.get_by_test_id("site-select")
    assert site.locator("option").all_inner_texts() == ["all sites", "hidden state", "MLP", "attention"]
    assert site.input_value() == "all"
    cells = int(heatmap.get_attribute("data-cells"))
    site.select_option("mlp")
    page.wait_for_function("([el, n]) => el.dataset.cells === String(n)", arg=[heatmap.element_handle(), cells // 3])
    assert site.input_value() == "mlp" and heatmap.get_by_test_id("cell-result").inner_text().strip() == ""
    assert heatmap.get_by_test_id("status").inner_text() == ""  # shown from the finished trace
    site.select_option("all")
    page.wait_for_function("([el, n]) => el.dataset.cells === String(n)", arg=[heatmap.element_handle(), cells])


# Each heat-grid cell's centre pixel, matched against the legend's ramp: [(row, col, rgb)] of
# cells whose colour is on no legend pixel (a NaN patch is grey: allowed).
CELL_COLOURS = """([heat, legend, rows, cols]) => {
  const px = (canvas, x, y) => Array.from(canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3));
  const lr = legend.width / parseFloat(legend.style.width);
  const ramp = [];
  for (let x = 0; x < legend.width; x++) ramp.push(px(legend, x, Math.round(19 * lr)));
  const near = (a, b) => a.every((v, i) => Math.abs(v - b[i]) <= 3);
  const off = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    const rgb = px(heat, Math.floor(((c + 0.5) * heat.width) / cols), Math.floor(((r + 0.5) * heat.height) / rows));
    if (!near(rgb, [220, 220, 220]) && !ramp.some((q) => near(rgb, q))) off.push([r, c, rgb]);
  }
  return off;
}"""


def check_overlay_legibility(overlay) -> None:
    """The heat grid beside the photo is in the legend's colours, the legend and the curve say
    what they show, and the line above names the corruption."""
    photo = overlay.locator("[data-testid=overlay-canvas]").bounding_box()
    heat = overlay.locator("[data-testid=heat-canvas]")
    box = heat.bounding_box()
    assert (round(box["width"]), round(box["height"])) == (round(photo["width"]), round(photo["height"]))
    assert box["x"] >= photo["x"] + photo["width"]  # beside the photo, not over it
    legend = overlay.locator("[data-testid=legend]")
    off = overlay.page.evaluate(CELL_COLOURS, [heat.element_handle(), legend.element_handle(), 4, 4])
    assert off == [], off
    assert "indirect effect of restoring the patch" in overlay.locator("[data-testid=legend-caption]").inner_text()
    used = overlay.locator("[data-testid=corruption]").inner_text()
    assert used == "patches traced under image noise on all visual tokens"
    assert overlay.locator("[data-testid=curve-title]").inner_text().startswith("restored p(")
    curve = overlay.locator("[data-testid=curve]")
    lo, hi = float(curve.get_attribute("data-lo")), float(curve.get_attribute("data-hi"))
    assert hi - lo >= 0.05 - 1e-9  # anchored at corrupted → clean, not the curve's own min–max


def check_clicks_without_a_kernel_job(page) -> None:
    """An overlay without on_patch and a heatmap without a session: a click selects or reads
    out, and nothing says "running…" or shows an error."""
    overlay = page.locator("[data-testid=patch-overlay]").nth(1)
    readout = overlay.locator("[data-testid=readout]")
    assert "only select" in readout.inner_text()
    size = overlay.locator("[data-testid=overlay-canvas]").bounding_box()
    overlay.locator("[data-testid=overlay-canvas]").click(position={"x": size["width"] / 8, "y": size["height"] / 8})
    page.wait_for_timeout(500)
    assert "patches (0,0)" in readout.inner_text() and "running" not in readout.inner_text()
    assert overlay.locator("[data-testid=error]").is_hidden()
    big = page.locator("[data-testid=trace-heatmap]").nth(1)
    canvas = big.locator("[data-testid=heatmap-canvas]")
    box = canvas.evaluate("el => el.mllCellBox(0, 3, 610)")
    canvas.click(position={"x": box["x"] + box["w"] / 2, "y": box["y"] + box["h"] / 2})
    page.wait_for_timeout(500)
    text = big.locator("[data-testid=readout]").inner_text()
    assert "layer 3" in text and "running" not in text and big.locator("[data-testid=error]").is_hidden()


LAYOUT = (
    "explorer",
    "trace-heatmap",
    "heatmap-canvas",
    "legend",
    "patch-overlay",
    "overlay-canvas",
    "heat-canvas",
    "patch-result",
)


def boxes(cell) -> dict:
    return {name: cell.locator(f"[data-testid={name}]").first.bounding_box() for name in LAYOUT}


def check_layout_holds_on_a_patch_click(page, cell) -> None:
    """A patch click outlines the image band's row in the heatmap and plots its curve in the room
    kept for it: no box moves (it once expanded the band and pushed the overlay down under the
    pointer). Expanded by the user, the band labels the picked patch's row (rows are 7 px: only
    every other one is labelled otherwise)."""
    overlay = cell.locator("[data-testid=patch-overlay]")
    image = overlay.get_by_test_id("overlay-canvas")
    image.scroll_into_view_if_needed()  # so the click itself scrolls nothing
    page.wait_for_timeout(300)
    before = boxes(cell)
    size = image.bounding_box()
    image.click(position={"x": size["width"] * 3.5 / 8, "y": size["height"] * 1.5 / 8})  # patch (1, 3) of 8 x 8
    overlay.get_by_test_id("patch-result").get_by_text("1 patch (1,3)").wait_for()
    page.wait_for_timeout(500)  # the heatmap's highlight redraw
    after = boxes(cell)
    moved = {
        k: {
            d: (before[k][d], after[k][d])
            for d in ("x", "y", "width", "height")
            if abs(before[k][d] - after[k][d]) > 0.5
        }
        for k in LAYOUT
    }
    moved = {k: v for k, v in moved.items() if v}
    assert not moved, moved
    heatmap = cell.locator("[data-testid=trace-heatmap]")
    heatmap.get_by_test_id("toggle-image").click()
    canvas = heatmap.get_by_test_id("heatmap-canvas")
    page.wait_for_function("el => (el.mllLabels || []).includes('<img 1,3> *')", arg=canvas.element_handle())
    labels = canvas.evaluate("el => el.mllLabels")
    assert "<img 1,2> *" not in labels  # its unpicked neighbour: rows spaced out
    assert "country" in labels and "USER" in labels  # image noise (the default): the phrase is not starred


def text_contrasts(root, parts: dict) -> dict:
    """WCAG contrast of each part (a locator; its SVG fill for SVG text) against its background."""
    colour = "el => el instanceof SVGElement ? getComputedStyle(el).fill : null"
    return {name: loc.evaluate(f"el => ({CONTRAST})([el, ({colour})(el)])") for name, loc in parts.items()}


def overlay_parts(overlay) -> dict:
    return {
        "title": overlay.locator(".mll-title").first,
        "corruption": overlay.get_by_test_id("corruption"),
        "caption": overlay.get_by_test_id("legend-caption"),
        "readout": overlay.get_by_test_id("readout"),
        "curve-title": overlay.get_by_test_id("curve-title"),
        "curve-axis": overlay.locator("[data-testid=curve] text").first,
    }


def explorer_parts(cell) -> dict:
    root = cell.locator("[data-testid=explorer]")
    heatmap = cell.locator("[data-testid=trace-heatmap]")
    return {
        "title": root.locator(".mll-title").first,
        "source": root.get_by_test_id("source"),
        "question": root.get_by_test_id("question-input"),
        "chip": root.get_by_test_id("token-chip").first,
        "constraints": root.get_by_test_id("constraints"),
        "run": root.get_by_test_id("run"),
        "answer": root.get_by_test_id("answer-token"),
        "heatmap-title": heatmap.get_by_test_id("title"),
        "axis-key": heatmap.get_by_test_id("axis-key"),
        "row-curve": heatmap.get_by_test_id("row-curve-title"),
        **{f"overlay-{k}": v for k, v in overlay_parts(cell.locator("[data-testid=patch-overlay]")).items()},
    }


def check_explorer_themes(page, cell) -> None:
    """The Explorer's panel, heatmap and overlay text meets WCAG AA (4.5:1) in Light and Dark."""
    parts = explorer_parts(cell)
    light = text_contrasts(cell, parts)
    use_theme(page, "JupyterLab Dark")
    page.wait_for_timeout(800)  # the theme's late stylesheet redraw
    dark = text_contrasts(cell, parts)
    cell.screenshot(path=str(SCREENSHOTS / "explorer_lab_dark.png"))
    use_theme(page, "JupyterLab Light")
    low = {
        f"{theme}:{k}": round(v, 2) for theme, d in (("light", light), ("dark", dark)) for k, v in d.items() if v < 4.5
    }
    assert not low, low


def use_theme(page, theme: str) -> None:
    """Settings > Theme > ``theme``, then wait for JupyterLab to apply it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Settings$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{theme}$")).click()
    light = "true" if "Light" in theme else "false"
    page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'")


def check_dark_theme(page, heatmap, overlay, big) -> float:
    """Light, then Settings > Theme > JupyterLab Dark: the heatmap's text and redrawn canvas
    labels, and the overlay's text and curve, stay readable (WCAG AA, 4.5:1). Returns the 32 x 620
    heatmap's (``big``) render time in ms after its redraw in the Dark theme."""
    canvas = heatmap.locator("[data-testid=heatmap-canvas]")
    big_canvas = big.locator("[data-testid=heatmap-canvas]")
    light, before = contrasts(heatmap), canvas.get_attribute("data-label-color")
    big_before = big_canvas.get_attribute("data-label-color")
    light_overlay = text_contrasts(overlay, overlay_parts(overlay))
    use_theme(page, "JupyterLab Dark")
    relabelled = "([el, old]) => el.dataset.labelColor !== old"
    page.wait_for_function(relabelled, arg=[canvas.element_handle(), before])
    page.wait_for_function(relabelled, arg=[big_canvas.element_handle(), big_before])
    page.wait_for_timeout(500)  # the theme's late stylesheet redraw
    dark_render_ms = float(big.get_attribute("data-render-ms"))
    dark, dark_overlay = contrasts(heatmap), text_contrasts(overlay, overlay_parts(overlay))
    heatmap.screenshot(path=str(SCREENSHOTS / "lab_dark_heatmap.png"))
    overlay.screenshot(path=str(SCREENSHOTS / "lab_dark_overlay.png"))
    rerun_cell(page, 4)  # bokeh's theme="auto" reads the theme JupyterLab just saved
    bokeh = page.locator(".jp-Notebook .jp-Cell").nth(4).locator(".jp-OutputArea")
    bokeh.get_by_text("bokeh theme dark").wait_for()
    page.wait_for_timeout(500)
    bokeh.screenshot(path=str(SCREENSHOTS / "lab_dark_bokeh.png"))
    use_theme(page, "JupyterLab Light")  # the setting persists: later tests start light again
    assert min(light.values()) >= 4.5 and min(dark.values()) >= 4.5, (light, dark)
    assert min(light_overlay.values()) >= 4.5 and min(dark_overlay.values()) >= 4.5, (light_overlay, dark_overlay)
    return dark_render_ms


@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_widgets_in_a_real_notebook(jupyter, page, ui):
    name = f"e2e_{ui}.ipynb"
    (jupyter.root / name).write_text(notebook(SETUP, OVERLAY, COUNTER, BIG, BOKEH))
    if ui == "lab":
        page.goto(f"{jupyter.url}/lab/workspaces/e2e-{ui}/tree/{name}?reset&token={jupyter.token}")
    else:
        page.goto(f"{jupyter.url}/notebooks/{name}?token={jupyter.token}")
    try:
        run_all(page, jupyter, name)
        timings = exercise(page, ui)
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / f"{ui}_failure.png"))
        raise
    print(f"\n[{ui}] " + " ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    # the target (< 200 ms, Light and Dark) is reported, not asserted, on a shared CPU
    assert timings["expanded_ms"] < 1000 and timings.get("expanded_dark_ms", 0) < 1000


def test_exported_html_renders_without_a_kernel(page, tmp_path):
    labels = ["<s>", *[f"<img {i // 24},{i % 24}>" for i in range(600)], *[f"w{i}" for i in range(19)]]
    scores = np.random.default_rng(0).random((32, 620))
    big = ml.TraceResult(scores, 0.9, 0.1, 0, "x", labels, labels, {}, {}, (1, 601), (24, 24), "mlp")
    path = big.to_html(tmp_path / "trace.html")
    page.goto(path.as_uri())
    root = page.locator("[data-testid=trace-heatmap]")
    canvas = root.locator("[data-testid=heatmap-canvas]")
    canvas.wait_for()
    box = canvas.bounding_box()
    assert box["width"] > 300 and box["height"] > 100
    collapsed_ms = float(root.get_attribute("data-render-ms"))
    readout, legend = root.locator("[data-testid=readout]"), root.locator("[data-testid=legend]")
    assert "re-run" not in readout.inner_text() and "re-run" not in page.locator("body").inner_text()
    assert (float(legend.get_attribute("data-lo")), float(legend.get_attribute("data-hi"))) == (0.1, 0.9)  # anchored
    canvas.hover(position={"x": box["width"] - 20, "y": 30})
    assert "layer" in readout.inner_text()
    canvas.click(position={"x": box["width"] - 20, "y": 30})  # no kernel: the click reads out, promises nothing
    page.wait_for_timeout(300)
    assert "layer" in readout.inner_text() and "running" not in readout.inner_text()
    root.locator("[data-testid=scale-select]").select_option("auto")
    page.wait_for_function("el => el.dataset.lo !== '0.1'", arg=legend.element_handle())
    lo, hi = float(legend.get_attribute("data-lo")), float(legend.get_attribute("data-hi"))
    assert (lo, hi) == (pytest.approx(scores.min(), abs=1e-6), pytest.approx(scores.max(), abs=1e-6))
    root.locator("[data-testid=scale-select]").select_option("anchored")  # ROME's normalised score: 0 to 1
    root.locator("[data-testid=value-select]").select_option("normalized")
    page.wait_for_function("el => el.dataset.lo === '0' && el.dataset.hi === '1'", arg=legend.element_handle())
    assert "(clean − corrupted)" in root.get_by_test_id("legend-definition").inner_text()
    root.locator("[data-testid=value-select]").select_option("score")
    light = contrasts(root)
    page.emulate_media(color_scheme="dark")
    page.wait_for_function("el => el.dataset.labelColor === '#e6e6e6'", arg=canvas.element_handle())
    dark = contrasts(root)
    page.screenshot(path=str(SCREENSHOTS / "export_html_dark.png"))
    page.emulate_media(color_scheme="light")
    assert min(light.values()) >= 4.5 and min(dark.values()) >= 4.5, (light, dark)
    check_png_download(page, root)
    root.locator("[data-testid=toggle-image]").click()
    page.wait_for_function("el => el.dataset.cells === String(32 * 620)", arg=root.element_handle())
    expanded_ms = float(root.get_attribute("data-render-ms"))
    page.screenshot(path=str(SCREENSHOTS / "export_html.png"))
    assert not page.errors, page.errors
    print(f"\n[export] 32x620 render_ms collapsed={collapsed_ms:.1f} expanded={expanded_ms:.1f} (target < 200)")


def test_exported_html_says_why_it_paints_no_normalised_effect(page, tmp_path):
    """Clean and corrupted p 0.0004 apart: the normalised score paints no cell, words stand in for
    the colour bar, and the downloaded PNG carries those words and the score's definition."""
    labels = ["<s>", "a", "b", "c"]
    scores = np.random.default_rng(0).random((6, 4)) * 0.01 + 0.5
    near = ml.TraceResult(scores, 0.5004, 0.5, 0, "x", labels, labels, {}, {}, (0, 0), (0, 0), "mlp")
    page.goto(near.to_html(tmp_path / "near.html", value="normalized").as_uri())
    root = page.locator("[data-testid=trace-heatmap]")
    root.get_by_test_id("heatmap-canvas").wait_for()
    note = root.get_by_test_id("scale-note")
    assert "too little to divide by: no normalised effect is shown" in note.inner_text()
    assert root.get_by_test_id("legend").is_hidden() and note.is_visible()
    with page.expect_download() as info:
        root.get_by_test_id("download-png").click()
    canvas = root.get_by_test_id("heatmap-canvas").bounding_box()
    ratio = page.evaluate("devicePixelRatio")
    with Image.open(info.value.path()) as image:  # three text lines (title, definition, note), no colour ramp
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
        assert image.height > (canvas["height"] + 3 * 16) * ratio
    assert not (np.abs(pixels - [253, 231, 37]).sum(1) < 40).any()  # viridis' top: only a ramp would show it
    root.get_by_test_id("value-select").select_option("score")
    root.get_by_test_id("legend").wait_for()
    assert note.is_hidden() or "divide" not in note.inner_text()
    assert not page.errors, page.errors


def check_png_download(page, root) -> None:
    """The page offers PNG only (no kernel writes SVG or HTML): the figure with its title above."""
    assert root.get_by_test_id("download-svg").is_hidden() and root.get_by_test_id("download-html").is_hidden()
    with page.expect_download() as info:
        root.get_by_test_id("download-png").click()
    canvas = root.get_by_test_id("heatmap-canvas").bounding_box()
    ratio = page.evaluate("devicePixelRatio")
    with Image.open(info.value.path()) as image:
        assert info.value.suggested_filename == "trace.png"
        assert image.width > (canvas["width"] + 220) * ratio and image.height > (canvas["height"] + 16) * ratio
        top = image.convert("L").crop((0, 0, image.width, round(24 * ratio)))
        assert top.getextrema()[0] < 100  # the title's text, dark on the light page


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 120, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def explore(page, ui: str) -> None:
    """Pick, mark (mouse and keyboard), run, edit, undo, upload, and send malformed requests."""
    from playwright.sync_api import expect  # imported here: MLLM_LENS_SKIP_E2E=1 runs need no playwright

    expect.set_options(timeout=patient(20_000))  # expect's own default is 5 s: too short on a loaded machine

    cell = page.locator(".jp-Notebook .jp-Cell").first
    root = cell.locator("[data-testid=explorer]")
    root.wait_for(timeout=patient(120_000))
    question = root.get_by_test_id("question-input")
    constraints = root.get_by_test_id("constraints")
    answer = root.get_by_test_id("answer")
    error = root.get_by_test_id("error")

    root.get_by_test_id("example-select").select_option("2")
    expect(question).to_have_value("What currency is used in this country?")
    root.get_by_test_id("example-select").select_option("0")
    expect(question).to_have_value("What is the capital of this country?")
    expect(constraints).to_have_text("visual: “this country”")

    chips = root.get_by_test_id("token-chip")
    chips.nth(6).focus()  # keyboard: Enter unmarks "country", Space marks it again
    page.keyboard.press("Enter")
    expect(constraints).to_have_text("visual: “this”")
    expect(chips.nth(6)).to_be_focused()
    page.keyboard.press("Space")
    expect(constraints).to_have_text("visual: “this country”")
    root.get_by_test_id("mode-textual").click()  # mouse: mark "capital" as textual, then unmark it
    chips.nth(3).click()
    expect(constraints).to_have_text("textual: “capital” · visual: “this country”")
    expect(chips.nth(3)).to_have_class("mll-chip mll-chip-textual")
    chips.nth(3).click()
    expect(constraints).to_have_text("visual: “this country”")

    started = time.monotonic()
    root.get_by_test_id("run").click()
    heatmap = cell.locator("[data-testid=trace-heatmap]")
    heatmap.wait_for()
    expect(answer).to_contain_text("run #1")  # shown before the figures fill, so they do not move
    expect(root.get_by_test_id("answer-token")).to_have_text("answer “Brasilia”")
    cell.locator("[data-testid=patch-overlay]").wait_for()
    run_s = time.monotonic() - started
    check_layout_holds_on_a_patch_click(page, cell)
    page.screenshot(path=str(SCREENSHOTS / f"explorer_{ui}.png"))
    if ui == "lab":
        check_explorer_themes(page, cell)

    panel = root.get_by_test_id("edit-panel")
    expect(panel).to_be_hidden()  # `hidden` wins over the panel's display:flex
    root.get_by_test_id("edit-toggle").click()
    expect(panel).to_be_visible()
    panel.get_by_test_id("edit-answer").fill("Paris")
    panel.get_by_test_id("edit-apply").click()
    expect(answer).to_contain_text("run #2")
    expect(root.get_by_test_id("answer-token")).to_have_text("answer “Paris” (model edited 1×)")
    expect(panel.get_by_test_id("edit-active")).to_contain_text("Brasilia → Paris")
    root.screenshot(path=str(SCREENSHOTS / f"explorer_{ui}_edited.png"))
    panel.get_by_test_id("edit-undo").click()
    expect(answer).to_contain_text("run #3")
    expect(root.get_by_test_id("answer-token")).to_have_text("answer “Brasilia”")
    expect(panel.get_by_test_id("edit-active")).to_have_text("no active edit")

    upload = root.get_by_test_id("upload-input")  # malformed from the page: bytes that are no image
    upload.set_input_files({"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"})
    upload_error = root.get_by_test_id("upload-error")  # shown next to the upload box, not at the top
    expect(upload_error).to_contain_text("Cannot read the uploaded file as an image")
    expect(error).to_be_hidden()
    details = root.get_by_test_id("upload-error-details")
    expect(details).to_be_hidden()  # the Python text waits in a collapsed toggle
    upload_error.locator("summary").click()
    expect(details).to_contain_text("PIL UnidentifiedImageError")
    assert "object at 0x" not in upload_error.inner_text()
    root.evaluate("el => el.mllSend({type: 'marks', spans: 'nonsense'})")
    expect(root.get_by_test_id("marks-error")).to_contain_text("Spans must be a list")
    expect(upload_error).to_be_hidden()
    root.evaluate("el => el.mllSend({type: 'explode'})")
    expect(error).to_contain_text("Unknown request type 'explode'")
    upload.set_input_files({"name": "green.png", "mimeType": "image/png", "buffer": png_bytes()})
    expect(root.get_by_test_id("source")).to_have_text("upload: green.png")
    expect(error).to_be_hidden()
    root.get_by_test_id("run").click()
    expect(answer).to_contain_text("run #4")
    expect(error).to_be_hidden()
    question.fill("Is this country in Asia?")  # a new question: the old answer, notes and figures go together
    question.press("Enter")
    expect(root.get_by_test_id("answer-token")).to_have_count(0)
    expect(cell.locator("[data-testid=trace-heatmap]")).to_have_count(0)
    expect(root.get_by_test_id("notes")).to_have_text("")
    chips_before = chips.all_inner_texts()  # a refused question stays to be corrected; the chips say they are old
    question.fill("x" * 301)
    question.press("Enter")
    expect(root.get_by_test_id("question-error")).to_contain_text("The tokens below still show the previous question.")
    expect(question).to_have_attribute("aria-invalid", "true")
    expect(question).to_have_value("x" * 301)
    expect(root.get_by_test_id("tokens")).to_have_class(re.compile(r"\bmll-stale\b"))
    assert chips.all_inner_texts() == chips_before

    counter = page.locator(".jp-Notebook .jp-Cell").nth(1)
    rerun_cell(page, 1)
    counter.locator(".jp-OutputArea", has_text="runs=4").wait_for()
    assert "EXPLORER runs=4 edits=0 errors=4" in output_of(page, 1)
    root.screenshot(path=str(SCREENSHOTS / f"explorer_{ui}_after_errors.png"))
    ours = [e for e in page.errors if "blob:" in e or "mll" in e]
    assert not ours, ours
    print(f"\n[explorer {ui}] first run (3 sites + overlay, demo model) {run_s:.1f} s")


@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_explorer_in_a_real_notebook(jupyter, page, ui):
    name = f"explorer_{ui}.ipynb"
    (jupyter.root / name).write_text(notebook(EXPLORER, EXPLORER_COUNTER))
    if ui == "lab":
        page.goto(f"{jupyter.url}/lab/workspaces/explorer-{ui}/tree/{name}?reset&token={jupyter.token}")
    else:
        page.goto(f"{jupyter.url}/notebooks/{name}?token={jupyter.token}")
    try:
        run_all(page, jupyter, name)
        explore(page, ui)
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / f"explorer_{ui}_failure.png"))
        raise
