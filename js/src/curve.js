// A small SVG line chart of a per-layer curve (no plotting library in the bundle).
// Its y-axis is anchored like the colour policy (policy.js): from the corrupted to the clean
// probability (at least MIN_SPAN wide), widened only to keep every point inside, never
// autoscaled to the curve itself, so 0.098–0.101 stays a flat line rather than a collapse.
import { fmt } from "./format.js";
import { colorRange } from "./policy.js";
import { finiteRange } from "./colormap.js";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

/**
 * The y range {lo, hi} of a curve of probabilities (pure: unit-tested): the anchored colour
 * range corrupted → clean, stretched to include the finite values; without the two
 * probabilities, 0 to 1 stretched likewise.
 */
export function curveRange(values, { clean = null, corrupted = null } = {}) {
  let { lo, hi } = clean != null && corrupted != null ? colorRange({ value: "score", clean, corrupted }) : { lo: 0, hi: 1 };
  const finite = Array.from(values ?? []).filter(Number.isFinite);
  if (finite.length) {
    const [dlo, dhi] = finiteRange(finite);
    lo = Math.min(lo, dlo);
    hi = Math.max(hi, dhi);
  }
  return { lo, hi: hi > lo ? hi : lo + 1e-9 };
}

/** The y of value `v` in a plot `height` high over {lo, hi} (pure). */
export function yOf(v, { lo, hi }, height, pad = 4) {
  return pad + (1 - (v - lo) / (hi - lo)) * (height - 2 * pad);
}

/** Points of `values` scaled into a box over `range` (default: curveRange without anchors). NaNs are skipped. */
export function curvePoints(values, width, height, pad = 4, range = null) {
  const { lo, hi } = range ?? curveRange(values);
  const n = values.length;
  const pts = [];
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(values[i])) continue;
    const x = pad + (n > 1 ? (i / (n - 1)) * (width - 2 * pad) : (width - 2 * pad) / 2);
    pts.push([x, yOf(values[i], { lo, hi }, height, pad)]);
  }
  return { pts, lo, hi };
}

/** The curve's title and y-axis label: what it plots, in words (pure). */
export function curveWords(target) {
  const p = `p(${target || "answer"})`;
  return { title: `restored ${p} per layer`, yLabel: p };
}

/**
 * An <svg> chart: x = layer (0 to `layers` − 1, default the values' count), y = restored
 * probability over the anchored range; dashed lines at the clean and corrupted probabilities
 * when given. `label` names it for assistive tools (the
 * caller shows the visible title above it).
 */
export function curveChart(values, { width = 280, height = 140, label = "", yLabel = "", clean = null, corrupted = null, layers = null } = {}) {
  const [left, bottom] = [54, 28];
  const plotW = width - left - 8;
  const plotH = height - bottom - 8;
  const range = curveRange(values, { clean, corrupted });
  const { pts, lo, hi } = curvePoints(values, plotW, plotH, 4, range);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "mll-curve", "data-testid": "curve", role: "img", "data-lo": lo, "data-hi": hi });
  root.append(svg("title", {}, `${label || "layer curve"}; y from ${fmt(lo)} to ${fmt(hi)}`));
  const g = svg("g", { transform: `translate(${left},8)` });
  g.append(svg("rect", { x: 0, y: 0, width: plotW, height: plotH, class: "mll-frame" }));
  for (const [name, p] of [["clean", clean], ["corrupted", corrupted]]) {
    if (p == null) continue;
    const y = yOf(p, range, plotH);
    g.append(svg("line", { x1: 0, x2: plotW, y1: y, y2: y, class: "mll-ref", "data-ref": name }));
    g.append(svg("text", { x: plotW - 2, y: y - 2, "text-anchor": "end", class: "mll-reftext" }, name));
  }
  g.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "mll-line" }));
  for (const [x, y] of pts) g.append(svg("circle", { cx: x, cy: y, r: 2.5 }));
  g.append(svg("text", { x: -4, y: 8, "text-anchor": "end" }, fmt(hi)));
  g.append(svg("text", { x: -4, y: plotH, "text-anchor": "end" }, fmt(lo)));
  g.append(svg("text", { x: 0, y: plotH + 12 }, "0"));
  g.append(svg("text", { x: plotW, y: plotH + 12, "text-anchor": "end" }, String((layers ?? values.length) - 1)));
  g.append(svg("text", { x: plotW / 2, y: plotH + 24, "text-anchor": "middle" }, "layer"));
  g.append(svg("text", { x: -40, y: plotH / 2, "text-anchor": "middle", transform: `rotate(-90 -40 ${plotH / 2})` }, yLabel));
  root.append(g);
  return root;
}
