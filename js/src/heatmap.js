// TraceHeatmap front end: layer x position heatmap(s) on a canvas, image band, hover readout,
// keyboard navigation, live fill, and the clicked cell's answer distributions.
import { decodeArray } from "./codec.js";
import { finiteRange, scale } from "./colormap.js";
import { fmt } from "./format.js";
import { buildRows, cellOrigin, hitTest, moveFocus, rowValue } from "./layout.js";
import { clickedText, heatmapHint, unreadable } from "./messages.js";
import { POLICIES, colorRange, legendMarks, legendSummary, policyOf, smallEffectNote } from "./policy.js";
import { drawLegend, errorBox, h, injectStyle, themeColors, watchTheme } from "./style.js";

const LABEL_FONT = "11px sans-serif";
const RUNNING = clickedText("", true);

function topTable(title, entries, target) {
  const rows = (entries ?? []).map(([token, prob]) =>
    h(
      "tr",
      {},
      h("td", { text: token === target ? `${token} ★` : token }),
      h("td", {}, h("span", { class: "mll-bar", style: `width:${Math.round(prob * 60)}px` }), fmt(prob)),
    ),
  );
  return h("div", {}, h("div", { class: "mll-muted", text: title }), h("table", {}, ...rows));
}

/**
 * The heatmap cell {panel, layer, row} a `cell_result` is for, in the current rows (pure): the
 * row holding its position (the image band when collapsed), or null.
 */
export function resultCell(out, geom) {
  const row = geom?.rows.findIndex((r) => r.positions.includes(out.position)) ?? -1;
  return row < 0 ? null : { panel: out.panel ?? 0, layer: out.layer, row };
}

export function renderHeatmap({ model, el }) {
  injectStyle(el);
  const canvas = h("canvas", { tabindex: "0", "data-lm-suppress-shortcuts": "true", "data-testid": "heatmap-canvas", role: "grid", "aria-label": "causal trace heatmap: arrow keys move, Enter restores the cell" });
  const legend = h("canvas", { "data-testid": "legend", role: "img", "aria-label": "colour scale" });
  const note = h("div", { class: "mll-note", "data-testid": "scale-note", hidden: true });
  const policy = h("select", { "data-testid": "scale-select", "aria-label": "colour scale" }, ...Object.entries(POLICIES).map(([value, text]) => h("option", { value, text })));
  policy.addEventListener("change", () => {
    model.set("scale", policy.value);
    model.save_changes();
  });
  const readout = h("div", { class: "mll-readout", "data-testid": "readout", "aria-live": "polite", text: heatmapHint(model.get("clickable")) });
  const result = h("div", { class: "mll-result", "data-testid": "cell-result" });
  const error = errorBox("error");
  const status = h("span", { class: "mll-muted", "data-testid": "status" });
  const progress = h("progress", { "data-testid": "progress", max: "1", value: "0", hidden: true });
  const cancel = h("button", { "data-testid": "cancel", hidden: true, onclick: () => model.send({ type: "cancel" }) }, "Cancel");
  const toggle = h("button", { "data-testid": "toggle-image", onclick: () => setExpanded(!model.get("expanded")) }, "");
  const title = h("span", { class: "mll-title" });
  const root = h(
    "div",
    { class: "mll-root", "data-testid": "trace-heatmap" },
    h("div", { class: "mll-head" }, title, toggle, h("label", { class: "mll-muted" }, "scale ", policy), progress, cancel, status),
    h("div", { class: "mll-body" }, h("div", { class: "mll-scroll" }, canvas), h("div", { class: "mll-side" }, legend, note, readout, error, result)),
  );
  el.replaceChildren(root);

  let geom = null;
  let scores = null;
  let focus = null;
  let hover = null;
  let frame = 0;

  function setExpanded(value) {
    model.set("expanded", value);
    model.save_changes();
  }

  const get = (panel, layer, pos) => scores.data[(panel * scores.shape[1] + layer) * scores.shape[2] + pos];

  /** The colour range (see policy.js) and the shift from probability to painted units. */
  function valueRange() {
    const value = model.get("value");
    const shift = value === "indirect_effect" ? model.get("corrupted_prob") : 0;
    const data = policyOf(model) === "auto" ? finiteRange(scores.data).map((v) => v - shift) : [];
    const options = { value, data, clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob") };
    return [colorRange({ ...options, policy: policyOf(model), vmin: model.get("vmin"), vmax: model.get("vmax") }), shift];
  }

  function drawScale(colorOf, range, colors) {
    const value = model.get("value");
    const unit = value === "indirect_effect" ? "indirect effect" : `p(${model.get("target_token")})`;
    const marks = legendMarks({ value, clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob"), ...range });
    drawLegend(legend, colorOf, range, { unit, marks, colors });
    legend.setAttribute("aria-label", legendSummary(unit, range, policyOf(model), marks));
    policy.value = policyOf(model);
    const text = smallEffectNote(scores.data, model.get("corrupted_prob"), { partial: model.get("status") === "tracing" });
    note.hidden = !text;
    note.textContent = text ?? "";
  }

  function draw() {
    const t0 = performance.now();
    frame = 0;
    try {
      scores = decodeArray(model.get("scores"));
    } catch (err) {
      error.show(unreadable("heatmap"), err.message);
      return;
    }
    const colors = themeColors(root);
    const labels = model.get("labels");
    const panels = model.get("panels");
    const [nPanels, nLayers] = scores.shape;
    const expanded = model.get("expanded");
    const focused = focus && geom?.rows[focus.row]?.positions[0];
    const { rows, height } = buildRows(labels, model.get("image_span"), expanded);
    if (focus) {
      // keep the keyboard focus on the same position when the image band expands or collapses
      const row = rows.findIndex((r) => r.positions.includes(focused));
      focus = row < 0 ? null : { ...focus, row };
    }
    const ctx = canvas.getContext("2d");
    ctx.font = LABEL_FONT;
    let labelWidth = 40;
    for (const row of rows) if (row.kind !== "image") labelWidth = Math.max(labelWidth, ctx.measureText(row.label).width);
    const cw = Math.max(5, Math.min(22, Math.floor(600 / (nLayers * nPanels))));
    geom = { left: Math.min(160, labelWidth) + 12, top: 20, cw, nLayers, nPanels, gap: 14, rows };
    const width = geom.left + nPanels * nLayers * cw + (nPanels - 1) * geom.gap + 8;
    const totalHeight = geom.top + height + 18;
    const ratio = globalThis.devicePixelRatio || 1;
    canvas.width = Math.ceil(width * ratio);
    canvas.height = Math.ceil(totalHeight * ratio);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${totalHeight}px`;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, totalHeight);
    const [range, shift] = valueRange();
    const colorOf = scale(model.get("colormap"), range.lo, range.hi);
    const highlight = new Set(model.get("highlight") ?? []);
    for (let panel = 0; panel < nPanels; panel++) {
      for (let r = 0; r < rows.length; r++) {
        const row = rows[r];
        for (let layer = 0; layer < nLayers; layer++) {
          const { value } = rowValue(row, layer, (l, p) => get(panel, l, p));
          const { x, y } = cellOrigin(geom, panel, layer, r);
          ctx.fillStyle = colorOf(value - shift);
          ctx.fillRect(x, y, cw, row.h);
        }
        if (row.positions.some((p) => highlight.has(p))) {
          const { x, y } = cellOrigin(geom, panel, 0, r);
          ctx.strokeStyle = colors.visual;
          ctx.lineWidth = 2;
          ctx.strokeRect(x + 1, y + 1, nLayers * cw - 2, row.h - 2);
        }
      }
      const { x } = cellOrigin(geom, panel, 0, 0);
      ctx.fillStyle = colors.fg;
      ctx.font = "bold 11px sans-serif";
      ctx.textBaseline = "alphabetic";
      ctx.fillText(panels[panel]?.title ?? "", x, 14);
      ctx.font = "10px sans-serif";
      ctx.textBaseline = "top";
      const step = Math.max(1, Math.ceil(20 / cw));
      for (let layer = 0; layer < nLayers; layer += step) ctx.fillText(String(layer), x + layer * cw, geom.top + height + 4);
    }
    ctx.font = LABEL_FONT;
    ctx.textBaseline = "middle";
    let lastLabelY = -Infinity;
    for (const row of rows) {
      const y = geom.top + row.y + row.h / 2;
      if (row.kind === "image" && y - lastLabelY < 11) continue;
      lastLabelY = y;
      ctx.fillStyle = row.kind === "token" ? colors.fg : colors.fg2;
      ctx.fillText(row.label, geom.left - 8 - Math.min(ctx.measureText(row.label).width, geom.left - 12), y, geom.left - 12);
    }
    if (focus && focus.row < rows.length) {
      const { x, y } = cellOrigin(geom, focus.panel, focus.layer, focus.row);
      ctx.strokeStyle = "#d50000";
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 1, y + 1, cw - 2, rows[focus.row].h - 2);
    }
    drawScale(colorOf, range, colors);
    updateHead();
    root.dataset.renderMs = (performance.now() - t0).toFixed(2);
    root.dataset.cells = String(nPanels * nLayers * rows.length);
    canvas.dataset.labelColor = colors.fg; // what the labels were drawn in (contrast tests)
  }

  // For tests and assistive tools: the canvas box {x, y, w, h} of (panel, layer, position), or null.
  canvas.mllCellBox = (panel, layer, position) => {
    const row = geom?.rows.findIndex((r) => r.positions.includes(position)) ?? -1;
    if (row < 0) return null;
    const { x, y } = cellOrigin(geom, panel, layer, row);
    return { x, y, w: geom.cw, h: geom.rows[row].h };
  };

  function schedule() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function updateHead() {
    const n = model.get("image_span");
    title.textContent = `target ${JSON.stringify(model.get("target_token"))} · clean ${fmt(model.get("clean_prob"))} · corrupted ${fmt(model.get("corrupted_prob"))}`;
    toggle.hidden = !(n && n[1] > n[0]);
    toggle.textContent = model.get("expanded") ? "Collapse image" : `Expand image (${n[1] - n[0]})`;
    const st = model.get("status");
    const tracing = st === "tracing";
    progress.hidden = !tracing;
    progress.value = model.get("progress");
    cancel.hidden = !tracing;
    status.textContent = st === "idle" ? "" : st;
    const msg = model.get("error");
    error.show(msg, model.get("error_details"));
    if (msg) readout.textContent = readout.textContent.replace(RUNNING, "");
  }

  function describe(cell) {
    const row = geom.rows[cell.row];
    const { value, position } = rowValue(row, cell.layer, (l, p) => get(cell.panel, l, p));
    const site = model.get("panels")[cell.panel]?.title ?? "";
    const where = row.kind === "band" ? `image band, best ${model.get("labels")[position]}` : `${JSON.stringify(row.label)} (pos ${position})`;
    return `${site} · layer ${cell.layer} · ${where} · score ${fmt(value)} · IE ${fmt(value - model.get("corrupted_prob"))}`;
  }

  function activate(cell) {
    const row = geom.rows[cell.row];
    if (row.kind === "band") {
      setExpanded(true);
      return;
    }
    const clickable = model.get("clickable");
    readout.textContent = clickedText(describe(cell), clickable);
    if (clickable) {
      // the result shown is now the previous cell's: dimmed until this one's arrives
      result.classList.toggle("mll-stale", result.childElementCount > 0);
      model.send({ type: "cell", panel: cell.panel, layer: cell.layer, position: row.positions[0] });
    }
  }

  function eventCell(event) {
    const box = canvas.getBoundingClientRect();
    return geom && hitTest(geom, event.clientX - box.left, event.clientY - box.top);
  }

  canvas.addEventListener("mousemove", (event) => {
    hover = eventCell(event);
    canvas.style.cursor = hover ? "pointer" : "default";
    if (hover) readout.textContent = describe(hover);
  });
  canvas.addEventListener("click", (event) => {
    const cell = eventCell(event);
    if (!cell) return;
    focus = cell;
    activate(cell);
    schedule();
  });
  canvas.addEventListener("keydown", (event) => {
    if (!geom) return;
    if (event.key === "Enter" || event.key === " ") {
      if (focus) activate(focus);
      event.preventDefault();
      event.stopPropagation();
      return;
    }
    const next = moveFocus(focus ?? { panel: 0, layer: 0, row: 0 }, event.key, geom);
    if (!next) return;
    event.preventDefault();
    event.stopPropagation(); // the notebook's own arrow / Enter shortcuts must not fire
    focus = focus ? next : { panel: 0, layer: 0, row: 0 };
    readout.textContent = describe(focus);
    schedule();
  });

  function renderResult() {
    result.classList.remove("mll-stale");
    const out = model.get("cell_result");
    if (!out || !out.restored_top) {
      result.replaceChildren();
      return;
    }
    const span = out.layers.length > 1 ? ` (layers ${out.layers[0]}–${out.layers[out.layers.length - 1]})` : "";
    result.replaceChildren(
      h("div", { class: "mll-title", text: `${out.site} restored at layer ${out.layer}${span}, ${JSON.stringify(out.label)} (pos ${out.position})` }),
      h("div", { text: `p(${out.target_token}) = ${fmt(out.restored_prob)} · run #${out.run}` }),
      h(
        "div",
        { class: "mll-cols" },
        topTable("clean", out.clean_top, out.target_token),
        topTable("corrupted", out.corrupted_top, out.target_token),
        topTable("restored", out.restored_top, out.target_token),
      ),
    );
    // the readout describes the cell this result is for (not wherever the focus or row 0 is):
    // both come from cell_result, so they never disagree
    const cell = resultCell(out, geom);
    if (cell && geom.rows[cell.row].kind !== "band") {
      focus = cell;
      readout.textContent = describe(cell);
      schedule();
    } else readout.textContent = `${out.site} · layer ${out.layer} · ${JSON.stringify(out.label)} (pos ${out.position})`;
  }

  const redrawOn = ["scores", "expanded", "colormap", "value", "scale", "vmin", "vmax", "highlight", "labels", "panels", "clean_prob", "corrupted_prob"];
  const headOn = ["status", "progress", "error", "error_details"];
  for (const name of redrawOn) model.on(`change:${name}`, schedule);
  for (const name of headOn) model.on(`change:${name}`, updateHead);
  model.on("change:cell_result", renderResult);
  draw();
  renderResult();
  const unwatch = watchTheme(root, schedule);
  return () => {
    unwatch();
    for (const name of redrawOn) model.off(`change:${name}`, schedule);
    for (const name of headOn) model.off(`change:${name}`, updateHead);
    model.off("change:cell_result", renderResult);
    if (frame) cancelAnimationFrame(frame);
  };
}
