// PatchOverlay front end: the probe image beside its patch grid coloured by per-patch values
// [layers, rows, cols]; a layer slider; click or drag a box (on either) to ask the kernel for
// the selected patches' layer curve.
//
// Side by side, not blended: a heat colour mixed with the photo (the old 0.6 opacity) takes the
// photo's hue (a flag's green, yellow or gold), so no cell could be read off the legend. The
// grid is drawn at full opacity in exactly the legend's colours, beside the untouched photo
// with the same grid lines; hovering or selecting a patch outlines it in both, so which part of
// the photo a cell is stays one glance away. (A greyscale underlay would still tint the cells.)
import { at, asBytes, decodeArray } from "./codec.js";
import { scale } from "./colormap.js";
import { curveChart, curveWords } from "./curve.js";
import { fmt } from "./format.js";
import { patchAt, patchesInBox } from "./layout.js";
import { clickedText, overlayHint, unreadable } from "./messages.js";
import { POLICIES, colorRange, legendMarks, legendSummary, policyOf, smallEffectNote } from "./policy.js";
import { drawLegend, errorBox, h, injectStyle, themeColors, watchTheme } from "./style.js";

const MAX_SIDE = 280;

/** Every cell of `values` at `layer`: {r, c, value, fill} with fill = colorOf(value) (pure). */
export function heatCells(values, layer, colorOf) {
  const [, rows, cols] = values.shape;
  const cells = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    const value = at(values, layer, r, c);
    cells.push({ r, c, value, fill: colorOf(value) });
  }
  return cells;
}

/** Paint `cells` as opaque pw x ph rectangles: nothing of the photo shows through. */
export function paintHeatGrid(ctx, cells, pw, ph) {
  ctx.globalAlpha = 1;
  for (const { r, c, fill } of cells) {
    ctx.fillStyle = fill;
    ctx.fillRect(c * pw, r * ph, pw, ph);
  }
}

/** The words above the legend: what the colours are, at which layer (pure). */
export function legendCaption(valueLabel, layer) {
  return `colour: ${valueLabel || "value"} · layer ${layer}`;
}

/**
 * The words under the legend when no patch moves p(answer) by MIN_SPAN (null otherwise), as the
 * heatmap says them (pure). The values are indirect effects (p − corrupted), so the change is
 * the value itself; without the trace's clean and corrupted p the units are unknown: no words.
 */
export function overlayNote(values, clean, corrupted) {
  return clean == null || corrupted == null ? null : smallEffectNote(values, 0);
}

/** The line above the figure naming the corruption its values were traced under ("" if unknown). */
export function corruptionLine(corruption) {
  return corruption ? `patches traced under ${corruption}` : "";
}

export function renderOverlay({ model, el }) {
  injectStyle(el);
  const canvas = h("canvas", { tabindex: "0", "data-lm-suppress-shortcuts": "true", "data-testid": "overlay-canvas", role: "grid", "aria-label": "image patches: arrow keys move, Enter computes the patch's layer curve" });
  const heat = h("canvas", { "data-testid": "heat-canvas", role: "img", "aria-label": "patch values in the legend's colours, beside the image" });
  const layer = h("input", { type: "range", min: "0", step: "1", "data-testid": "layer-slider", "aria-label": "layer" });
  const layerText = h("span", { class: "mll-muted" });
  const caption = h("div", { "data-testid": "legend-caption" });
  const legend = h("canvas", { "data-testid": "legend", role: "img", "aria-label": "colour scale" });
  const note = h("div", { class: "mll-note", "data-testid": "scale-note", hidden: true });
  const policy = h("select", { "data-testid": "scale-select", "aria-label": "colour scale" }, ...Object.entries(POLICIES).map(([value, text]) => h("option", { value, text })));
  policy.addEventListener("change", () => {
    model.set("scale", policy.value);
    model.save_changes();
  });
  const readout = h("div", { class: "mll-readout", "data-testid": "readout", text: overlayHint(model.get("clickable")) });
  const result = h("div", { class: "mll-result", "data-testid": "patch-result" });
  const error = errorBox("error");
  const status = h("span", { class: "mll-muted", "data-testid": "status" });
  const title = h("span", { class: "mll-title" });
  const used = h("div", { class: "mll-muted", "data-testid": "corruption" });
  const root = h(
    "div",
    { class: "mll-root", "data-testid": "patch-overlay" },
    h("div", { class: "mll-head" }, title, status),
    used,
    h("div", { class: "mll-controls" }, h("label", {}, "layer ", layer), layerText, h("label", {}, "scale ", policy)),
    h("div", { class: "mll-body" }, h("div", { class: "mll-canvases" }, canvas, heat), h("div", { class: "mll-side" }, caption, legend, note, readout, error, result)),
  );
  el.replaceChildren(root);

  let bitmap = null;
  let values = null;
  let size = [MAX_SIDE, MAX_SIDE];
  let focus = [0, 0];
  let hover = null;
  let dragStart = null;
  let dragNow = null;
  let frame = 0;

  layer.addEventListener("input", () => {
    model.set("layer", Number(layer.value));
    model.save_changes();
  });

  async function loadImage() {
    const raw = model.get("image");
    bitmap = null;
    if (raw) {
      try {
        const blob = new Blob([asBytes(raw).slice()], { type: "image/png" });
        bitmap = await createImageBitmap(blob);
      } catch (err) {
        error.show(unreadable("image"), err.message);
      }
    }
    draw();
  }

  function grid() {
    return values ? [values.shape[1], values.shape[2]] : [1, 1];
  }

  function prepare(target) {
    const ratio = globalThis.devicePixelRatio || 1;
    target.width = size[0] * ratio;
    target.height = size[1] * ratio;
    target.style.width = `${size[0]}px`;
    target.style.height = `${size[1]}px`;
    const ctx = target.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size[0], size[1]);
    return ctx;
  }

  function gridLines(ctx, rows, cols, styles) {
    const [pw, ph] = [size[0] / cols, size[1] / rows];
    for (const [color, width] of styles) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let r = 1; r < rows; r++) ctx.moveTo(0, r * ph), ctx.lineTo(size[0], r * ph);
      for (let c = 1; c < cols; c++) ctx.moveTo(c * pw, 0), ctx.lineTo(c * pw, size[1]);
      ctx.stroke();
    }
  }

  function outlines(ctx, rows, cols, colors) {
    const [pw, ph] = [size[0] / cols, size[1] / rows];
    const outline = (patches, color, dash = []) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.setLineDash(dash);
      for (const [r, c] of patches) ctx.strokeRect(c * pw + 1, r * ph + 1, pw - 2, ph - 2);
      ctx.setLineDash([]);
    };
    outline(model.get("selected") ?? [], colors.visual);
    if (dragStart && dragNow) outline(patchesInBox(dragStart, dragNow), "#ffffff");
    if (document.activeElement === canvas) outline([focus], "#d50000");
    if (hover) outline([hover], colors.fg, [4, 3]);
  }

  /** Model changes redraw once, at the next frame: one message often changes several traits
   * (the result's status with its curve), and the curve is shown first. */
  function schedule() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function draw() {
    const t0 = performance.now();
    if (frame) cancelAnimationFrame(frame); // drawn now (an event): the scheduled frame is done
    frame = 0;
    try {
      values = decodeArray(model.get("values"));
    } catch (err) {
      error.show(unreadable("patch values"), err.message);
      return;
    }
    const colors = themeColors(root);
    const [rows, cols] = grid();
    const iw = bitmap?.width ?? cols * 16;
    const ih = bitmap?.height ?? rows * 16;
    const k = MAX_SIDE / Math.max(iw, ih);
    size = [Math.round(iw * k), Math.round(ih * k)];
    const photo = prepare(canvas);
    if (bitmap) photo.drawImage(bitmap, 0, 0, size[0], size[1]);
    const nLayers = values.shape[0];
    const l = Math.min(model.get("layer"), nLayers - 1);
    layer.max = String(nLayers - 1);
    layer.value = String(l);
    layerText.textContent = `${l} / ${nLayers - 1}`;
    const [clean, corrupted] = [model.get("clean_prob"), model.get("corrupted_prob")];
    const options = { value: "indirect_effect", clean, corrupted, data: values.data, vmin: model.get("vmin"), vmax: model.get("vmax") };
    const range = colorRange({ ...options, policy: policyOf(model) });
    const colorOf = scale(model.get("colormap"), range.lo, range.hi);
    const cells = prepare(heat);
    paintHeatGrid(cells, heatCells(values, l, colorOf), size[0] / cols, size[1] / rows);
    gridLines(photo, rows, cols, [["rgba(0,0,0,0.45)", 2], ["rgba(255,255,255,0.8)", 1]]);
    gridLines(cells, rows, cols, [[colors.bg, 1]]);
    outlines(photo, rows, cols, colors);
    outlines(cells, rows, cols, colors);
    const marks = legendMarks({ value: "indirect_effect", clean, corrupted, ...range });
    const unit = model.get("value_label");
    caption.textContent = legendCaption(unit, l);
    drawLegend(legend, colorOf, range, { unit: "", marks, colors });
    legend.setAttribute("aria-label", legendSummary(unit, range, policyOf(model), marks));
    note.textContent = overlayNote(values.data, clean, corrupted) ?? "";
    note.hidden = !note.textContent;
    policy.value = policyOf(model);
    title.textContent = model.get("title");
    used.textContent = corruptionLine(model.get("corruption"));
    used.hidden = !used.textContent;
    const st = model.get("status");
    status.textContent = st === "idle" ? "" : st;
    error.show(model.get("error"), model.get("error_details"));
    if (model.get("error")) readout.textContent = readout.textContent.replace(clickedText("", true), "");
    root.dataset.renderMs = (performance.now() - t0).toFixed(2);
  }

  function patchOf(event) {
    const box = event.currentTarget.getBoundingClientRect();
    const [rows, cols] = grid();
    return patchAt(event.clientX - box.left, event.clientY - box.top, size[0], size[1], rows, cols);
  }

  let requestedAt = null; // when the last patch curve was asked for (performance.now())

  function request(patches) {
    const clickable = model.get("clickable");
    readout.textContent = clickedText(`patches ${patches.map((p) => `(${p})`).join(" ")}`, clickable);
    if (clickable) {
      requestedAt = performance.now();
      model.send({ type: "patches", patches });
    }
    else {
      model.set("selected", patches);
      model.save_changes();
    }
  }

  for (const target of [canvas, heat]) {
    target.addEventListener("mousedown", (event) => {
      dragStart = patchOf(event);
      dragNow = dragStart;
    });
    target.addEventListener("mousemove", (event) => {
      const p = patchOf(event);
      if (!p || !values) return;
      const l = Math.min(model.get("layer"), values.shape[0] - 1);
      readout.textContent = `patch (${p[0]}, ${p[1]}) · layer ${l} · ${model.get("value_label") || "value"}: ${fmt(at(values, l, p[0], p[1]))}`;
      const moved = !hover || hover[0] !== p[0] || hover[1] !== p[1];
      hover = p;
      if (dragStart) dragNow = p;
      if (moved || dragStart) draw();
    });
    target.addEventListener("mouseup", (event) => {
      const end = patchOf(event) ?? dragNow;
      if (dragStart && end) {
        focus = end;
        request(patchesInBox(dragStart, end));
      }
      dragStart = dragNow = null;
      draw();
    });
    target.addEventListener("mouseleave", () => {
      dragStart = dragNow = hover = null;
      draw();
    });
  }
  canvas.addEventListener("focus", draw);
  canvas.addEventListener("blur", draw);
  canvas.addEventListener("keydown", (event) => {
    const [rows, cols] = grid();
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (event.key === "Enter" || event.key === " ") request([focus]);
    else if (moves[event.key]) {
      const [dr, dc] = moves[event.key];
      focus = [Math.min(rows - 1, Math.max(0, focus[0] + dr)), Math.min(cols - 1, Math.max(0, focus[1] + dc))];
      draw();
    } else return;
    event.preventDefault();
    event.stopPropagation();
  });

  /** The layer curve of the last request; before any, the same frame empty (its room kept, so
   * the first click moves nothing). */
  function renderCurve() {
    const curve = decodeArray(model.get("curve"));
    const words = curveWords(model.get("target_token"));
    const [clean, corrupted] = [model.get("clean_prob"), model.get("corrupted_prob")];
    const layers = decodeArray(model.get("values"))?.shape[0];
    const chart = (data) => curveChart(data, { label: words.title, yLabel: words.yLabel, clean, corrupted, layers });
    if (!curve) {
      const hint = model.get("clickable") ? "click a patch (or drag a box) to plot it" : "no curve: this overlay has no on_patch callback";
      result.replaceChildren(h("div", { class: "mll-title mll-oneline", "data-testid": "curve-title", text: words.title }), h("div", { class: "mll-muted mll-oneline", text: hint }), chart([]));
      return;
    }
    const label = model.get("curve_label");
    let best = 0;
    for (let i = 1; i < curve.data.length; i++) if (curve.data[i] > curve.data[best]) best = i;
    result.replaceChildren(
      h("div", { class: "mll-title mll-oneline", "data-testid": "curve-title", text: `${words.title}: ${label}` }),
      h("div", { class: "mll-oneline", text: `peak ${fmt(curve.data[best])} at layer ${best} · run #${model.get("clicks_done")}` }),
      // the chart's own accessible title leaves out the patch list, which the line above names
      chart(curve.data),
    );
    readout.textContent = `done: ${label}`;
    if (requestedAt !== null) {
      // click -> curve as the page sees it (kernel run + messaging + this render), for the e2e timing
      root.dataset.clickMs = (performance.now() - requestedAt).toFixed(1);
      requestedAt = null;
    }
  }

  const redrawOn = ["values", "layer", "colormap", "scale", "vmin", "vmax", "selected", "status", "error", "error_details", "title", "value_label", "corruption", "clean_prob", "corrupted_prob"];
  for (const name of redrawOn) model.on(`change:${name}`, schedule);
  model.on("change:image", loadImage);
  model.on("change:curve", renderCurve);
  loadImage();
  renderCurve();
  const unwatch = watchTheme(root, draw);
  return () => {
    unwatch();
    for (const name of redrawOn) model.off(`change:${name}`, schedule);
    model.off("change:image", loadImage);
    model.off("change:curve", renderCurve);
    if (frame) cancelAnimationFrame(frame);
  };
}
