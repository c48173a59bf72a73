// TraceHeatmap front end: layer x position heatmap(s) on a canvas, image band, hover readout,
// keyboard navigation, live fill, and the clicked cell's answer distributions.
import { decodeArray } from "./codec.js";
import { finiteRange, scale } from "./colormap.js";
import { siteChoices } from "./controls.js";
import { curveChart } from "./curve.js";
import { fmt } from "./format.js";
import { buildRows, cellOrigin, hitTest, labelledRows, moveFocus, rowMarks, rowValue } from "./layout.js";
import { axisKey, clickedText, figureLines, heatmapHint, traceTitle, unreadable } from "./messages.js";
import { POLICIES, VALUES, colorRange, gapNote, gapTooSmall, legendMarks, legendSummary, painter, policyOf, smallEffectNote, valueWords } from "./policy.js";
import { composeFigure, download, drawLegend, errorBox, h, injectStyle, themeColors, watchTheme } from "./style.js";

const LABEL_FONT = "11px sans-serif";
const AXIS_TITLE = 16; // the rotated token-axis title's strip, left of the labels
const GUTTER = 8; // constraint bars, between the labels and the cells
const RUNNING = clickedText("", true);
const FORMATS = ["png", "svg", "html"];

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
  const definition = h("div", { class: "mll-muted", "data-testid": "legend-definition" });
  const note = h("div", { class: "mll-note", "data-testid": "scale-note", hidden: true });
  const policy = h("select", { "data-testid": "scale-select", "aria-label": "colour scale" }, ...Object.entries(POLICIES).map(([value, text]) => h("option", { value, text })));
  policy.addEventListener("change", () => {
    model.set("scale", policy.value);
    model.save_changes();
  });
  const value = h("select", { "data-testid": "value-select", "aria-label": "score" }, ...Object.entries(VALUES).map(([v, text]) => h("option", { value: v, text })));
  value.addEventListener("change", () => {
    model.set("value", value.value);
    model.save_changes();
  });
  const siteSelect = h("select", { "data-testid": "site-select", "aria-label": "site: which panels are shown" });
  siteSelect.addEventListener("change", () => model.send({ type: "site", site: siteSelect.value })); // the kernel shows or traces it
  const siteLabel = h("label", { class: "mll-muted", title: "a site without a finished trace at this window is traced" }, "site ", siteSelect);
  const window_ = h("input", { type: "number", min: "1", step: "1", "data-testid": "window-input", "aria-label": "window: layers restored around each cell", title: "layers restored around each cell; a change re-runs the trace" });
  window_.addEventListener("change", rerun);
  const windowError = errorBox("window-error"); // a refused window, next to its input
  const windowGroup = h("span", { class: "mll-head" }, h("label", { class: "mll-muted" }, "window ", window_), windowError);
  const downloads = FORMATS.map((format) => h("button", { "data-testid": `download-${format}`, title: `download the figure as ${format.toUpperCase()}`, onclick: () => save(format) }, format.toUpperCase()));
  const readout = h("div", { class: "mll-readout", "data-testid": "readout", "aria-live": "polite", text: heatmapHint(model.get("clickable")) });
  const rowCurve = h("div", { "data-testid": "row-curve" });
  const result = h("div", { class: "mll-result", "data-testid": "cell-result" });
  const error = errorBox("error");
  const status = h("span", { class: "mll-muted", "data-testid": "status" });
  const progress = h("progress", { "data-testid": "progress", max: "1", value: "0", hidden: true });
  const cancel = h("button", { "data-testid": "cancel", hidden: true, onclick: () => model.send({ type: "cancel" }) }, "Cancel");
  const toggle = h("button", { "data-testid": "toggle-image", onclick: () => setExpanded(!model.get("expanded")) }, "");
  const title = h("span", { class: "mll-title", "data-testid": "title" });
  const key = h("div", { class: "mll-muted", "data-testid": "axis-key" });
  const root = h(
    "div",
    { class: "mll-root", "data-testid": "trace-heatmap" },
    h("div", { class: "mll-head" }, title),
    h(
      "div",
      { class: "mll-head" },
      toggle,
      siteLabel,
      h("label", { class: "mll-muted" }, "score ", value),
      h("label", { class: "mll-muted" }, "scale ", policy),
      windowGroup,
      h("span", { class: "mll-muted" }, "download ", ...downloads),
      progress,
      cancel,
      status,
    ),
    key,
    h("div", { class: "mll-body" }, h("div", { class: "mll-scroll" }, canvas), h("div", { class: "mll-side" }, legend, definition, note, readout, error, rowCurve, result)),
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

  /** The colour range (see policy.js) and the map from probability to painted units. */
  function valueRange() {
    const anchors = { value: model.get("value"), clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob") };
    const paint = painter(anchors);
    const data = policyOf(model) === "auto" ? finiteRange(scores.data).map(paint) : [];
    return [colorRange({ ...anchors, data, policy: policyOf(model), vmin: model.get("vmin"), vmax: model.get("vmax") }), paint];
  }

  function drawScale(colorOf, range, colors) {
    const [value, clean, corrupted] = [model.get("value"), model.get("clean_prob"), model.get("corrupted_prob")];
    const words = valueWords(value, model.get("target_token"));
    const marks = legendMarks({ value, clean, corrupted, ...range });
    drawLegend(legend, colorOf, range, { unit: words.unit, marks, colors });
    legend.setAttribute("aria-label", `${legendSummary(words.unit, range, policyOf(model), marks)}; ${words.definition}`);
    definition.textContent = words.definition;
    policy.value = policyOf(model);
    const partial = model.get("status") === "tracing";
    const text = value === "normalized" ? gapNote(value, clean, corrupted) : smallEffectNote(scores.data, corrupted, { partial });
    note.hidden = !text;
    note.textContent = text ?? "";
    legend.hidden = gapTooSmall(value, clean, corrupted); // the note's words instead of a scale of nothing
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
    if (focus && focus.panel >= nPanels) focus = null; // another site's panels
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
    geom = { left: AXIS_TITLE + Math.min(160, labelWidth) + 12 + GUTTER, top: 20, cw, nLayers, nPanels, gap: 14, rows };
    const width = geom.left + nPanels * nLayers * cw + (nPanels - 1) * geom.gap + 8;
    const totalHeight = geom.top + height + 32;
    const ratio = globalThis.devicePixelRatio || 1;
    canvas.width = Math.ceil(width * ratio);
    canvas.height = Math.ceil(totalHeight * ratio);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${totalHeight}px`;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, totalHeight);
    const [range, paint] = valueRange();
    const colorOf = scale(model.get("colormap"), range.lo, range.hi);
    const highlight = new Set(model.get("highlight") ?? []);
    for (let panel = 0; panel < nPanels; panel++) {
      for (let r = 0; r < rows.length; r++) {
        const row = rows[r];
        for (let layer = 0; layer < nLayers; layer++) {
          const { value } = rowValue(row, layer, (l, p) => get(panel, l, p));
          const { x, y } = cellOrigin(geom, panel, layer, r);
          ctx.fillStyle = colorOf(paint(value));
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
      ctx.textAlign = "center";
      ctx.fillText("layer", x + (nLayers * cw) / 2, geom.top + height + 18);
      ctx.textAlign = "left";
    }
    drawTokenAxis(ctx, rows, highlight, colors);
    if (focus && focus.row < rows.length) {
      const { x, y } = cellOrigin(geom, focus.panel, focus.layer, focus.row);
      ctx.strokeStyle = "#d50000";
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 1, y + 1, cw - 2, rows[focus.row].h - 2);
    }
    drawScale(colorOf, range, colors);
    updateHead();
    renderRowCurve();
    root.dataset.renderMs = (performance.now() - t0).toFixed(2);
    root.dataset.cells = String(nPanels * nLayers * rows.length);
    canvas.dataset.labelColor = colors.fg; // what the labels were drawn in (contrast tests)
  }

  /** Row labels (every token row; image rows spaced out, the highlighted and focused ones always),
   * "*" on corrupted rows, a bar by constraint rows, and the axis title. */
  function drawTokenAxis(ctx, rows, highlight, colors) {
    const marks = rowMarks(rows, model.get("spans"));
    const keep = rows.flatMap((row, i) => (row.positions.some((p) => highlight.has(p)) || i === focus?.row ? [i] : []));
    const shown = labelledRows(rows, keep);
    const room = geom.left - AXIS_TITLE - GUTTER - 4;
    const right = geom.left - GUTTER - 2;
    ctx.textBaseline = "middle";
    const drawn = [];
    for (const [i, row] of rows.entries()) {
      const y = geom.top + row.y + row.h / 2;
      const { corrupted, kind } = marks[i];
      if (kind) {
        ctx.fillStyle = kind === "visual" ? colors.visual : colors.accent;
        ctx.fillRect(geom.left - GUTTER + 1, geom.top + row.y, 4, row.h);
      }
      if (!shown.has(i)) continue;
      const label = corrupted ? `${row.label} *` : row.label;
      ctx.font = keep.includes(i) ? `bold ${LABEL_FONT}` : LABEL_FONT;
      ctx.fillStyle = row.kind === "token" || keep.includes(i) ? colors.fg : colors.fg2;
      ctx.fillText(label, right - Math.min(ctx.measureText(label).width, room), y, room);
      drawn.push(label);
    }
    canvas.mllLabels = drawn; // what the axis shows (tests)
    ctx.save();
    ctx.font = LABEL_FONT;
    ctx.fillStyle = colors.fg2;
    ctx.textAlign = "center";
    const bottom = rows.length ? rows.at(-1).y + rows.at(-1).h : 0;
    ctx.translate(8, geom.top + Math.min(bottom, 400) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("token", 0, 0);
    ctx.restore();
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

  /** The focused cell's row over the layers (read from the scores: no kernel call), in a frame
   * that is there, empty, before any cell is chosen (so choosing one moves nothing). */
  function renderRowCurve() {
    const p = `p(${model.get("target_token") || "answer"})`;
    const nLayers = scores.shape[1];
    const row = focus && geom.rows[focus.row];
    const values = row ? Array.from({ length: nLayers }, (_, l) => rowValue(row, l, (ll, pp) => get(focus.panel, ll, pp)).value) : [];
    const where = row?.kind === "band" ? "the image band (best patch)" : JSON.stringify(row?.label);
    const title = row ? `${p} per layer at ${where} · ${model.get("panels")[focus.panel]?.title ?? ""}` : `${p} per layer`;
    const hint = row ? "restored at each layer: this row of the heatmap" : "click a cell to plot its row here";
    rowCurve.replaceChildren(
      h("div", { class: "mll-title mll-oneline", "data-testid": "row-curve-title", text: title }),
      h("div", { class: "mll-muted mll-oneline", text: hint }),
      curveChart(values, { label: title, yLabel: p, clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob"), layers: nLayers }),
    );
  }

  /** Scroll the heatmap's own box (never the page) to the first highlighted image row. */
  function revealHighlight() {
    const box = canvas.parentElement;
    const picked = new Set(model.get("highlight") ?? []);
    const row = geom?.rows.find((r) => r.kind === "image" && r.positions.some((p) => picked.has(p)));
    if (!row || box.scrollHeight <= box.clientHeight) return;
    const y = geom.top + row.y;
    if (y < box.scrollTop || y + row.h > box.scrollTop + box.clientHeight) box.scrollTop = y - box.clientHeight / 2;
  }
  const reveal = () => requestAnimationFrame(revealHighlight); // after the redraw scheduled first

  /** A new window from the page: the kernel re-traces with it, or refuses it next to the input
   * (only offered with a session). Back to the traced window, a refusal is simply withdrawn. */
  function rerun() {
    const n = Number(window_.value);
    if (n !== model.get("window")) model.send({ type: "trace", window: n });
    else if (model.get("window_error")) {
      model.set("window_error", "");
      model.set("window_error_details", "");
      model.save_changes();
    }
  }

  /** Download the figure: PNG drawn here (title, axis key, heatmap, legend); SVG and HTML
   * written by the kernel (mllm_lens.export) and sent back as bytes. */
  function save(format) {
    if (format !== "png") {
      model.send({ type: "export", format });
      return;
    }
    const words = { value: model.get("value"), definition: definition.textContent, note: note.hidden ? "" : note.textContent };
    const lines = figureLines({ title: title.textContent, key: key.textContent, ...words });
    composeFigure(lines, canvas, legend.hidden ? null : legend, themeColors(root)).toBlob((blob) => download(blob, "trace.png"));
  }

  function onMessage(msg, buffers) {
    if (msg?.type === "download" && buffers?.length) download(new Blob([buffers[0]], { type: msg.mime }), msg.name);
  }

  function updateHead() {
    const n = model.get("image_span");
    const corruption = model.get("corruption") ?? "";
    title.textContent = traceTitle({ question: model.get("question"), target: model.get("target_token"), corruption, clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob") });
    const parts = axisKey(model.get("spans"), corruption);
    key.replaceChildren(...parts.map(({ kind, text }, i) => h("span", {}, i ? " · " : "", kind === "corrupted" ? "" : h("span", { class: `mll-bar-${kind}`, text: "▌" }), text)));
    key.hidden = !parts.length;
    toggle.hidden = !(n && n[1] > n[0]);
    toggle.textContent = model.get("expanded") ? "Collapse image" : `Expand image (${n[1] - n[0]})`;
    const st = model.get("status");
    const tracing = st === "tracing";
    value.value = model.get("value");
    const sites = siteChoices(model.get("site_options"), model.get("panels"));
    const offered = JSON.stringify(sites.choices);
    if (siteSelect.dataset.choices !== offered) siteSelect.replaceChildren(...sites.choices.map(({ value: v, text }) => h("option", { value: v, text })));
    siteSelect.dataset.choices = offered;
    siteSelect.value = sites.current;
    siteSelect.disabled = tracing;
    siteLabel.hidden = !sites.choices.length;
    windowGroup.hidden = !model.get("clickable");
    const refused = model.get("window_error");
    windowError.show(refused, model.get("window_error_details"));
    window_.setAttribute("aria-invalid", refused ? "true" : "false");
    if (!refused) window_.value = String(model.get("window") ?? 1); // a refused value stays to be corrected
    const layers = scores?.shape[1] ?? 1; // the paper's window w restores 2w + 1 layers
    window_.max = String(model.get("window_mode") === "rome" ? layers : Math.max(1, Math.floor((layers - 1) / 2)));
    window_.disabled = tracing;
    const formats = model.get("downloads") ?? ["png"];
    for (const [i, button] of downloads.entries()) button.hidden = !formats.includes(FORMATS[i]);
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
    const normalised = painter({ value: "normalized", clean: model.get("clean_prob"), corrupted: model.get("corrupted_prob") })(value);
    return `${site} · layer ${cell.layer} · ${where} · p ${fmt(value)} · IE ${fmt(value - model.get("corrupted_prob"))} · normalised ${fmt(normalised)}`;
  }

  let clickedAt = null; // when the last restoration was asked for (performance.now())

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
      clickedAt = performance.now();
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

  /** Other panels (the site control): nothing read out or focused belongs to them. */
  function onPanels() {
    focus = null;
    readout.textContent = heatmapHint(model.get("clickable"));
    schedule();
  }

  /** Another window: the readout's numbers were the old window's (the kernel clears the result). */
  function onWindow() {
    readout.textContent = heatmapHint(model.get("clickable"));
  }

  function renderResult() {
    result.classList.remove("mll-stale");
    const out = model.get("cell_result");
    if (!out || !out.restored_top) {
      result.replaceChildren();
      return;
    }
    if (clickedAt !== null) {
      // click -> result as the page sees it (kernel run + messaging + this render), for the e2e timing
      root.dataset.clickMs = (performance.now() - clickedAt).toFixed(1);
      clickedAt = null;
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

  const redrawOn = ["scores", "expanded", "colormap", "value", "scale", "vmin", "vmax", "highlight", "labels", "panels", "clean_prob", "corrupted_prob", "spans", "question", "corruption"];
  const headOn = ["status", "progress", "error", "error_details", "window", "window_mode", "window_error", "window_error_details", "clickable", "downloads", "site_options"];
  for (const name of redrawOn) model.on(`change:${name}`, schedule);
  for (const name of headOn) model.on(`change:${name}`, updateHead);
  model.on("change:cell_result", renderResult);
  model.on("change:panels", onPanels);
  model.on("change:window", onWindow);
  model.on("msg:custom", onMessage);
  for (const name of ["highlight", "expanded"]) model.on(`change:${name}`, reveal);
  draw();
  renderResult();
  const unwatch = watchTheme(root, schedule);
  return () => {
    unwatch();
    for (const name of redrawOn) model.off(`change:${name}`, schedule);
    for (const name of headOn) model.off(`change:${name}`, updateHead);
    model.off("change:cell_result", renderResult);
    model.off("change:panels", onPanels);
    model.off("change:window", onWindow);
    model.off("msg:custom", onMessage);
    for (const name of ["highlight", "expanded"]) model.off(`change:${name}`, reveal);
    if (frame) cancelAnimationFrame(frame);
  };
}
