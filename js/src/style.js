// Styles and DOM helpers shared by the widgets. Every colour comes from the notebook's theme
// (THEME): VS Code's CSS variables (--vscode-*, set only in its notebook outputs), else JupyterLab
// / Notebook 7's (--jp-*), else light defaults (the exported page sets --jp-* itself, light or
// dark by the reader's preference). VS Code comes first because ipywidgets' own stylesheet, which
// VS Code loads for widgets, sets light --jp-* values on :root whatever VS Code's theme is.
// Canvases read the same colours (themeColors) and redraw when the theme changes (watchTheme).
import { fmt } from "./format.js";
import { labelSpots } from "./layout.js";

/** Each widget colour (--mll-<name>): [VS Code's variable, JupyterLab's variable, light default]. */
export const THEME = {
  fg: ["--vscode-editor-foreground", "--jp-ui-font-color1", "#1f1f1f"],
  fg2: ["--vscode-descriptionForeground", "--jp-ui-font-color2", "#595959"],
  bg: ["--vscode-editor-background", "--jp-layout-color1", "#ffffff"],
  bg2: ["--vscode-editorWidget-background", "--jp-layout-color2", "#eeeeee"],
  border: ["--vscode-editorWidget-border", "--jp-border-color1", "#9e9e9e"],
  accent: ["--vscode-focusBorder", "--jp-brand-color1", "#1565c0"],
  error: ["--vscode-errorForeground", "--jp-error-color1", "#c62828"],
  warn: ["--vscode-editorWarning-foreground", "--jp-warn-color1", "#a15c00"],
};
const VISUAL = "#e65100"; // the visual constraint's orange, the same on light and dark pages

/** The CSS rule defining --mll-* on the widget root: each colour through its THEME fall-back chain. */
export function themeRule(theme = THEME) {
  const chain = ([first, ...rest]) => (rest.length ? `var(${first},${chain(rest)})` : first);
  const colours = Object.entries(theme).map(([name, sources]) => `--mll-${name}:${chain(sources)}`);
  return `.mll-root{${[...colours, `--mll-visual:${VISUAL}`].join(";")}}`;
}

const CSS = `
${themeRule()}
.mll-root{font:12px/1.4 var(--jp-ui-font-family,system-ui,-apple-system,"Segoe UI",sans-serif);color:var(--mll-fg);display:flex;flex-direction:column;gap:6px;max-width:100%}
.mll-root [hidden]{display:none !important}
.mll-head{display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.mll-title{font-weight:600}
.mll-muted{color:var(--mll-fg2)}
.mll-root button,.mll-root select,.mll-root input[type=text],.mll-root input[type=number]{font:inherit;color:var(--mll-fg);background:var(--mll-bg2);border:1px solid var(--mll-border);border-radius:3px}
.mll-root button{padding:1px 8px;cursor:pointer}
.mll-root button:disabled{color:var(--mll-fg2);cursor:default}
.mll-root input[type=text],.mll-root input[type=number]{background:var(--mll-bg)}
.mll-root input[type=number]{width:4.5em}
.mll-root button:focus-visible,.mll-root canvas:focus-visible,.mll-root select:focus-visible,.mll-root input:focus-visible{outline:2px solid var(--mll-accent);outline-offset:1px}
.mll-error{color:var(--mll-error);border:1px solid var(--mll-error);border-left-width:4px;padding:3px 8px;border-radius:3px;white-space:pre-wrap}
.mll-head .mll-error{max-width:32em;padding:1px 6px}
.mll-error details{color:var(--mll-fg2);margin-top:2px}
.mll-error summary{cursor:pointer}
.mll-error pre{margin:2px 0 0;max-height:12em;overflow:auto;white-space:pre-wrap;font-size:11px}
.mll-note{border-left:3px solid var(--mll-warn);padding-left:6px}
.mll-body{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.mll-scroll{max-height:640px;max-width:100%;overflow:auto}
.mll-side{display:flex;flex-direction:column;gap:8px;min-width:220px;flex:0 1 320px}
.mll-readout{min-height:4.2em;font-variant-numeric:tabular-nums}
.mll-result table{border-collapse:collapse;font-variant-numeric:tabular-nums}
.mll-result td,.mll-result th{padding:0 6px 0 0;text-align:left;vertical-align:middle}
.mll-bar{display:inline-block;height:8px;background:var(--mll-accent);vertical-align:middle;margin-right:4px}
.mll-cols{display:flex;gap:12px;flex-wrap:wrap}
.mll-controls{display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.mll-curve text{font-size:10px;fill:var(--mll-fg)}
.mll-curve .mll-frame{fill:none;stroke:var(--mll-border)}
.mll-curve .mll-line{fill:none;stroke:var(--mll-accent);stroke-width:2}
.mll-curve circle{fill:var(--mll-accent)}
.mll-curve .mll-ref{stroke:var(--mll-fg2);stroke-dasharray:4 3}
.mll-curve .mll-reftext{fill:var(--mll-fg2)}
.mll-canvases{display:flex;gap:8px;align-items:flex-start}
.mll-grow{flex:1 1 320px}
.mll-question{min-width:28em}
.mll-preview{width:120px;height:120px;object-fit:contain;border:1px solid var(--mll-border);image-rendering:pixelated}
.mll-chips{display:flex;flex-wrap:wrap;gap:3px}
.mll-chips.mll-stale,.mll-result.mll-stale{opacity:.55}
.mll-root input[aria-invalid=true]{border-color:var(--mll-error)}
.mll-chip{padding:1px 5px;border:1px solid var(--mll-border);border-radius:3px;cursor:pointer;user-select:none;background:var(--mll-bg);color:var(--mll-fg)}
.mll-chip:focus-visible{outline:2px solid var(--mll-accent);outline-offset:1px}
.mll-root .mll-chip-visual{background:rgba(230,81,0,.18);border:2px solid var(--mll-visual)}
.mll-root .mll-chip-textual{background:rgba(21,101,192,.18);border:2px dashed var(--mll-accent)}
.mll-root button.mll-mode[aria-pressed=true]{font-weight:600;box-shadow:inset 0 -3px 0 var(--mll-fg)}
.mll-bar-visual{color:var(--mll-visual)}
.mll-bar-textual{color:var(--mll-accent)}
.mll-oneline{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.mll-panel{border:1px solid var(--mll-border);border-radius:3px;padding:6px;display:flex;flex-direction:column;gap:6px}
`;
const LIGHT = { ...Object.fromEntries(Object.entries(THEME).map(([name, sources]) => [name, sources.at(-1)])), visual: VISUAL };
const THEME_ATTRIBUTES = ["class", "style", "data-jp-theme-light", "data-jp-theme-name", "data-vscode-theme-kind"];

export function injectStyle(el) {
  const doc = el.ownerDocument ?? document;
  if (doc.getElementById("mll-style")) return;
  const style = doc.createElement("style");
  style.id = "mll-style";
  style.textContent = CSS;
  doc.head.appendChild(style);
}

/** Small DOM helper: h("div", {class: "x", "data-testid": "y"}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v == null) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) node.append(child);
  return node;
}

/** The theme's colours as resolved at `el` (the light defaults while it is not in a document). */
export function themeColors(el) {
  const css = el.isConnected ? getComputedStyle(el) : null;
  const read = (key) => css?.getPropertyValue(`--mll-${key}`).trim() || LIGHT[key];
  return Object.fromEntries(Object.keys(LIGHT).map((key) => [key, read(key)]));
}

/**
 * Call `redraw` once `el` is in the document and whenever the theme changes (JupyterLab's body
 * attributes, VS Code's body class, the reader's light / dark preference); returns a cleanup.
 */
export function watchTheme(el, redraw) {
  const timers = new Set();
  const later = (ms) => {
    const id = setTimeout(() => {
      timers.delete(id);
      redraw();
    }, ms);
    timers.add(id);
  };
  const changed = () => {
    redraw();
    later(150); // a theme's stylesheet may land just after its attributes
  };
  const observer = new MutationObserver(changed);
  for (const node of [document.body, document.documentElement]) observer.observe(node, { attributes: true, attributeFilter: THEME_ATTRIBUTES });
  const media = globalThis.matchMedia?.("(prefers-color-scheme: dark)");
  media?.addEventListener?.("change", changed);
  let frame = 0;
  const untilConnected = () => {
    frame = el.isConnected ? 0 : requestAnimationFrame(untilConnected);
    if (!frame) redraw();
  };
  if (!el.isConnected) frame = requestAnimationFrame(untilConnected);
  return () => {
    observer.disconnect();
    media?.removeEventListener?.("change", changed);
    if (frame) cancelAnimationFrame(frame);
    for (const id of timers) clearTimeout(id);
  };
}

/**
 * An error box: a plain message and, when there is one, the Python exception in a collapsed
 * "details" toggle. `box.show(message, details)`; an empty message hides it.
 */
export function errorBox(testid) {
  const text = h("div", { "data-testid": `${testid}-message` });
  const pre = h("pre", { "data-testid": `${testid}-details` });
  const more = h("details", {}, h("summary", { text: "details" }), pre);
  const node = h("div", { class: "mll-error", "data-testid": testid, role: "alert", hidden: true }, text, more);
  node.show = (message, details) => {
    node.hidden = !message;
    text.textContent = message ?? "";
    pre.textContent = details ?? "";
    more.hidden = !details;
    more.open = false;
  };
  return node;
}

/**
 * Draw a horizontal colour legend into a canvas: the ramp over `range` {lo, hi}, its end values,
 * the unit, and a tick for each mark {label, t} (the corrupted and clean probabilities).
 */
export function drawLegend(canvas, colorOf, range, { unit = "", marks = [], colors = LIGHT } = {}) {
  const [width, height, top] = [220, 46, 13];
  const ratio = globalThis.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  for (let i = 0; i < width; i++) {
    ctx.fillStyle = colorOf(range.lo + ((range.hi - range.lo) * i) / (width - 1));
    ctx.fillRect(i, top, 1, 12);
  }
  ctx.font = "10px sans-serif";
  ctx.fillStyle = colors.fg;
  ctx.strokeStyle = colors.fg;
  ctx.textBaseline = "alphabetic";
  const xs = marks.map((mark) => Math.round(mark.t * (width - 1)) + 0.5);
  const spots = labelSpots(xs, marks.map((mark) => ctx.measureText(mark.label).width), width);
  for (const [i, mark] of marks.entries()) {
    ctx.beginPath();
    ctx.moveTo(xs[i], top - 2);
    ctx.lineTo(xs[i], top + 14);
    ctx.stroke();
    ctx.fillText(mark.label, spots[i], top - 3);
  }
  ctx.textBaseline = "top";
  const [left, right] = [fmt(range.lo), fmt(range.hi)];
  ctx.fillText(left, 0, top + 16);
  ctx.fillText(right, width - ctx.measureText(right).width, top + 16);
  ctx.fillText(unit, (width - ctx.measureText(unit).width) / 2, top + 16);
  canvas.dataset.lo = String(range.lo);
  canvas.dataset.hi = String(range.hi);
}

/**
 * One canvas for a downloaded PNG: `lines` of text (figureLines) above the figure canvas and its
 * legend (none: a `null` legend, e.g. no scale when the normalised effect is undefined), on the
 * theme's background, at the canvases' own pixel ratio.
 */
export function composeFigure(lines, figure, legend, colors = LIGHT) {
  const ratio = figure.width / (parseFloat(figure.style.width) || figure.width);
  const [pad, lineH] = [8 * ratio, 16 * ratio];
  const out = document.createElement("canvas");
  const ctx = out.getContext("2d");
  const font = (bold) => `${bold ? "bold " : ""}${12 * ratio}px sans-serif`;
  ctx.font = font(true);
  const textW = Math.max(0, ...lines.map((line) => ctx.measureText(line).width));
  const top = pad + lines.length * lineH + pad;
  const [legendW, legendH] = legend ? [pad + legend.width, legend.height] : [0, 0];
  out.width = Math.ceil(Math.max(figure.width + legendW, textW) + 2 * pad);
  out.height = Math.ceil(top + Math.max(figure.height, legendH) + pad);
  ctx.fillStyle = colors.bg;
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.fillStyle = colors.fg;
  ctx.textBaseline = "top";
  for (const [i, line] of lines.entries()) {
    ctx.font = font(i === 0);
    ctx.fillText(line, pad, pad + i * lineH);
  }
  ctx.drawImage(figure, pad, top);
  if (legend) ctx.drawImage(legend, pad + figure.width + pad, top);
  return out;
}

/** Save `blob` as a file named `name` (the browser's download). */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
