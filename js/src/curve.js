// A small SVG line chart of a per-layer curve (no plotting library in the bundle).
import { fmt } from "./format.js";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

/** Points of `values` scaled into a box (pure: unit-tested). NaNs are skipped. */
export function curvePoints(values, width, height, pad = 4) {
  const finite = Array.from(values).filter(Number.isFinite);
  const lo = finite.length ? Math.min(...finite) : 0;
  const hi = finite.length ? Math.max(...finite) : 1;
  const span = hi > lo ? hi - lo : 1;
  const n = values.length;
  const pts = [];
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(values[i])) continue;
    const x = pad + (n > 1 ? (i / (n - 1)) * (width - 2 * pad) : (width - 2 * pad) / 2);
    const y = pad + (1 - (values[i] - lo) / span) * (height - 2 * pad);
    pts.push([x, y]);
  }
  return { pts, lo, hi };
}

/** An <svg> chart: x = layer, y = value. */
export function curveChart(values, { width = 260, height = 120, label = "" } = {}) {
  const [left, bottom] = [42, 18];
  const plotW = width - left - 6;
  const plotH = height - bottom - 14;
  const { pts, lo, hi } = curvePoints(values, plotW, plotH);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "mll-curve", "data-testid": "curve", role: "img" });
  root.append(svg("title", {}, label || "layer curve"));
  const g = svg("g", { transform: `translate(${left},14)` });
  g.append(svg("rect", { x: 0, y: 0, width: plotW, height: plotH, class: "mll-frame" }));
  g.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "mll-line" }));
  for (const [x, y] of pts) g.append(svg("circle", { cx: x, cy: y, r: 2.5 }));
  g.append(svg("text", { x: -4, y: 8, "text-anchor": "end" }, fmt(hi)));
  g.append(svg("text", { x: -4, y: plotH, "text-anchor": "end" }, fmt(lo)));
  g.append(svg("text", { x: 0, y: plotH + 13 }, "0"));
  g.append(svg("text", { x: plotW, y: plotH + 13, "text-anchor": "end" }, `layer ${values.length - 1}`));
  root.append(g);
  root.append(svg("text", { x: left, y: 10 }, label));
  return root;
}
