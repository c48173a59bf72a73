// Styles shared by the widgets, injected once per document (no CSS asset to ship).
const CSS = `
.mll-root{font:12px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;display:flex;flex-direction:column;gap:6px;max-width:100%}
.mll-head{display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.mll-title{font-weight:600}
.mll-muted{color:#666}
.mll-root button{font:inherit;padding:1px 8px;border:1px solid #999;border-radius:3px;background:#f6f6f6;cursor:pointer}
.mll-root button:focus-visible,.mll-root canvas:focus-visible{outline:2px solid #1565c0;outline-offset:1px}
.mll-error{background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;padding:4px 8px;border-radius:3px;white-space:pre-wrap}
.mll-body{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.mll-scroll{max-height:640px;max-width:100%;overflow:auto}
.mll-side{display:flex;flex-direction:column;gap:8px;min-width:220px}
.mll-readout{min-height:3em;font-variant-numeric:tabular-nums}
.mll-result table{border-collapse:collapse;font-variant-numeric:tabular-nums}
.mll-result td,.mll-result th{padding:0 6px 0 0;text-align:left;vertical-align:middle}
.mll-bar{display:inline-block;height:8px;background:#3e4989;vertical-align:middle;margin-right:4px}
.mll-cols{display:flex;gap:12px;flex-wrap:wrap}
.mll-controls{display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.mll-curve text{font-size:10px;fill:#444}
.mll-grow{flex:1 1 320px}
.mll-question{min-width:28em;font:inherit}
.mll-preview{width:120px;height:120px;object-fit:contain;border:1px solid #ccc;image-rendering:pixelated}
.mll-chips{display:flex;flex-wrap:wrap;gap:3px}
.mll-chip{padding:1px 5px;border:1px solid #bbb;border-radius:3px;cursor:pointer;user-select:none;background:#fff}
.mll-chip:focus-visible{outline:2px solid #1565c0;outline-offset:1px}
.mll-root .mll-chip-visual{background:#ffe0b2;border:2px solid #e65100}
.mll-root .mll-chip-textual{background:#bbdefb;border:2px dashed #1565c0}
.mll-root button.mll-mode[aria-pressed=true]{font-weight:600;box-shadow:inset 0 -3px 0 #333}
.mll-panel{border:1px solid #ddd;border-radius:3px;padding:6px;display:flex;flex-direction:column;gap:6px}
`;

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

/** Draw a horizontal colour legend with min / max labels into a canvas. */
export function drawLegend(canvas, colorOf, vmin, vmax, label) {
  const width = 200;
  const height = 34;
  const ratio = globalThis.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  for (let i = 0; i < width; i++) {
    ctx.fillStyle = colorOf(vmin + ((vmax - vmin) * i) / (width - 1));
    ctx.fillRect(i, 0, 1, 12);
  }
  ctx.fillStyle = "#333";
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "top";
  ctx.fillText(fmt(vmin), 0, 15);
  const right = fmt(vmax);
  ctx.fillText(right, width - ctx.measureText(right).width, 15);
  const mid = label ?? "";
  ctx.fillText(mid, (width - ctx.measureText(mid).width) / 2, 15);
}

export function fmt(v, digits = 3) {
  if (v == null || !Number.isFinite(v)) return "–";
  return Math.abs(v) >= 1000 ? v.toExponential(2) : v.toFixed(digits);
}
