// PatchOverlay front end: the probe image with its patch grid coloured by per-patch values
// [layers, rows, cols]; layer and opacity sliders; click or drag a box to ask the kernel for
// the selected patches' layer curve.
import { at, asBytes, decodeArray } from "./codec.js";
import { scale } from "./colormap.js";
import { curveChart } from "./curve.js";
import { fmt } from "./format.js";
import { patchAt, patchesInBox } from "./layout.js";
import { clickedText, overlayHint, unreadable } from "./messages.js";
import { POLICIES, colorRange, legendMarks, legendSummary, policyOf } from "./policy.js";
import { drawLegend, errorBox, h, injectStyle, themeColors, watchTheme } from "./style.js";

const MAX_SIDE = 360;

export function renderOverlay({ model, el }) {
  injectStyle(el);
  const canvas = h("canvas", { tabindex: "0", "data-lm-suppress-shortcuts": "true", "data-testid": "overlay-canvas", role: "grid", "aria-label": "image patches: arrow keys move, Enter computes the patch's layer curve" });
  const layer = h("input", { type: "range", min: "0", step: "1", "data-testid": "layer-slider", "aria-label": "layer" });
  const layerText = h("span", { class: "mll-muted" });
  const opacity = h("input", { type: "range", min: "0", max: "1", step: "0.05", "data-testid": "opacity-slider", "aria-label": "opacity" });
  const legend = h("canvas", { "data-testid": "legend", role: "img", "aria-label": "colour scale" });
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
  const root = h(
    "div",
    { class: "mll-root", "data-testid": "patch-overlay" },
    h("div", { class: "mll-head" }, title, status),
    h("div", { class: "mll-controls" }, h("label", {}, "layer ", layer), layerText, h("label", {}, "opacity ", opacity), h("label", {}, "scale ", policy)),
    h("div", { class: "mll-body" }, canvas, h("div", { class: "mll-side" }, legend, readout, error, result)),
  );
  el.replaceChildren(root);

  let bitmap = null;
  let values = null;
  let size = [MAX_SIDE, MAX_SIDE];
  let focus = [0, 0];
  let dragStart = null;
  let dragNow = null;

  layer.addEventListener("input", () => {
    model.set("layer", Number(layer.value));
    model.save_changes();
  });
  opacity.addEventListener("input", () => {
    model.set("opacity", Number(opacity.value));
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

  function draw() {
    const t0 = performance.now();
    values = decodeArray(model.get("values"));
    const [rows, cols] = grid();
    const iw = bitmap?.width ?? cols * 16;
    const ih = bitmap?.height ?? rows * 16;
    const k = MAX_SIDE / Math.max(iw, ih);
    size = [Math.round(iw * k), Math.round(ih * k)];
    const ratio = globalThis.devicePixelRatio || 1;
    canvas.width = size[0] * ratio;
    canvas.height = size[1] * ratio;
    canvas.style.width = `${size[0]}px`;
    canvas.style.height = `${size[1]}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size[0], size[1]);
    if (bitmap) ctx.drawImage(bitmap, 0, 0, size[0], size[1]);
    const nLayers = values.shape[0];
    const l = Math.min(model.get("layer"), nLayers - 1);
    layer.max = String(nLayers - 1);
    layer.value = String(l);
    layerText.textContent = `${l} / ${nLayers - 1}`;
    opacity.value = String(model.get("opacity"));
    const [clean, corrupted] = [model.get("clean_prob"), model.get("corrupted_prob")];
    const options = { value: "indirect_effect", clean, corrupted, data: values.data, vmin: model.get("vmin"), vmax: model.get("vmax") };
    const range = colorRange({ ...options, policy: policyOf(model) });
    const colorOf = scale(model.get("colormap"), range.lo, range.hi);
    const [pw, ph] = [size[0] / cols, size[1] / rows];
    ctx.globalAlpha = model.get("opacity");
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        ctx.fillStyle = colorOf(at(values, l, r, c));
        ctx.fillRect(c * pw, r * ph, pw, ph);
      }
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "rgba(255,255,255,0.5)";
    ctx.lineWidth = 1;
    for (let r = 0; r <= rows; r++) ctx.strokeRect(0, r * ph, size[0], 0);
    for (let c = 0; c <= cols; c++) ctx.strokeRect(c * pw, 0, 0, size[1]);
    const outline = (patches, color) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      for (const [r, c] of patches) ctx.strokeRect(c * pw + 1, r * ph + 1, pw - 2, ph - 2);
    };
    outline(model.get("selected") ?? [], "#e65100");
    if (dragStart && dragNow) outline(patchesInBox(dragStart, dragNow), "#ffffff");
    if (document.activeElement === canvas) outline([focus], "#d50000");
    const marks = legendMarks({ value: "indirect_effect", clean, corrupted, ...range });
    const unit = model.get("value_label");
    drawLegend(legend, colorOf, range, { unit, marks, colors: themeColors(root) });
    legend.setAttribute("aria-label", legendSummary(unit, range, policyOf(model), marks));
    policy.value = policyOf(model);
    title.textContent = model.get("title");
    const st = model.get("status");
    status.textContent = st === "idle" ? "" : st;
    error.show(model.get("error"), model.get("error_details"));
    if (model.get("error")) readout.textContent = readout.textContent.replace(clickedText("", true), "");
    root.dataset.renderMs = (performance.now() - t0).toFixed(2);
  }

  function patchOf(event) {
    const box = canvas.getBoundingClientRect();
    const [rows, cols] = grid();
    return patchAt(event.clientX - box.left, event.clientY - box.top, size[0], size[1], rows, cols);
  }

  function request(patches) {
    const clickable = model.get("clickable");
    readout.textContent = clickedText(`patches ${patches.map((p) => `(${p})`).join(" ")}`, clickable);
    if (clickable) model.send({ type: "patches", patches });
    else {
      model.set("selected", patches);
      model.save_changes();
    }
  }

  canvas.addEventListener("mousedown", (event) => {
    dragStart = patchOf(event);
    dragNow = dragStart;
  });
  canvas.addEventListener("mousemove", (event) => {
    const p = patchOf(event);
    if (!p || !values) return;
    const l = Math.min(model.get("layer"), values.shape[0] - 1);
    readout.textContent = `patch (${p[0]}, ${p[1]}) · layer ${l} · value ${fmt(at(values, l, p[0], p[1]))}`;
    if (dragStart) {
      dragNow = p;
      draw();
    }
  });
  canvas.addEventListener("mouseup", (event) => {
    const end = patchOf(event) ?? dragNow;
    if (dragStart && end) {
      focus = end;
      request(patchesInBox(dragStart, end));
    }
    dragStart = dragNow = null;
    draw();
  });
  canvas.addEventListener("mouseleave", () => {
    dragStart = dragNow = null;
  });
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

  function renderCurve() {
    const curve = decodeArray(model.get("curve"));
    if (!curve) {
      result.replaceChildren();
      return;
    }
    const label = model.get("curve_label");
    let best = 0;
    for (let i = 1; i < curve.data.length; i++) if (curve.data[i] > curve.data[best]) best = i;
    result.replaceChildren(
      h("div", { class: "mll-title", text: label }),
      h("div", { text: `peak ${fmt(curve.data[best])} at layer ${best} · run #${model.get("clicks_done")}` }),
      curveChart(curve.data, { label: "per-layer value" }),
    );
    readout.textContent = `done: ${label}`;
  }

  const redrawOn = ["values", "layer", "opacity", "colormap", "scale", "vmin", "vmax", "selected", "status", "error", "error_details", "title", "value_label"];
  for (const name of redrawOn) model.on(`change:${name}`, draw);
  model.on("change:image", loadImage);
  model.on("change:curve", renderCurve);
  loadImage();
  renderCurve();
  const unwatch = watchTheme(root, draw);
  return () => {
    unwatch();
    for (const name of redrawOn) model.off(`change:${name}`, draw);
    model.off("change:image", loadImage);
    model.off("change:curve", renderCurve);
  };
}
