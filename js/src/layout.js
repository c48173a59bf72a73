// Layout maths of the heatmap: rows are prompt positions (the image span collapsed into one
// band unless expanded), columns are layers, one panel per site. Pure functions, unit-tested.

/**
 * Display rows for `labels` with the image span [start, end) collapsed into one "band" row,
 * or expanded into one short row per image position.
 * Each row: {kind: "token" | "band" | "image", label, positions, y, h}.
 */
export function buildRows(labels, imageSpan, expanded, { rowHeight = 16, imageRowHeight = null } = {}) {
  const [start, end] = imageSpan ?? [0, 0];
  const nImage = Math.max(0, end - start);
  const imgH = imageRowHeight ?? Math.max(2, Math.min(rowHeight, Math.floor(480 / Math.max(1, nImage))));
  const rows = [];
  let y = 0;
  const push = (row) => {
    rows.push({ ...row, y });
    y += row.h;
  };
  for (let p = 0; p < labels.length; p++) {
    if (nImage > 0 && p === start) {
      if (expanded) {
        for (let q = start; q < end; q++) push({ kind: "image", label: labels[q], positions: [q], h: imgH });
      } else {
        const positions = Array.from({ length: nImage }, (_, i) => start + i);
        push({ kind: "band", label: `image (${nImage})`, positions, h: rowHeight });
      }
      p = end - 1;
      continue;
    }
    push({ kind: "token", label: labels[p], positions: [p], h: rowHeight });
  }
  return { rows, height: y };
}

/** Index of the row containing vertical offset y (binary search), or -1. */
export function rowAt(rows, y) {
  let lo = 0;
  let hi = rows.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = rows[mid];
    if (y < r.y) hi = mid - 1;
    else if (y >= r.y + r.h) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/**
 * Geometry of panels side by side: {left, top, cw, nLayers, nPanels, gap, rows}.
 * Returns {panel, layer, row} for canvas point (x, y), or null outside every cell.
 */
export function hitTest(geom, x, y) {
  const { left, top, cw, nLayers, nPanels, gap } = geom;
  const panelWidth = nLayers * cw;
  const dx = x - left;
  if (dx < 0) return null;
  const panel = Math.floor(dx / (panelWidth + gap));
  if (panel >= nPanels) return null;
  const inPanel = dx - panel * (panelWidth + gap);
  if (inPanel >= panelWidth) return null;
  const row = rowAt(geom.rows, y - top);
  if (row < 0) return null;
  return { panel, layer: Math.floor(inPanel / cw), row };
}

/** Top-left corner of a cell on the canvas. */
export function cellOrigin(geom, panel, layer, row) {
  return {
    x: geom.left + panel * (geom.nLayers * geom.cw + geom.gap) + layer * geom.cw,
    y: geom.top + geom.rows[row].y,
  };
}

/**
 * Value of a row at one layer: the score itself, or for a band the largest finite score over
 * its positions (and which position holds it). `get(layer, position)` reads the scores.
 */
export function rowValue(row, layer, get) {
  let best = NaN;
  let where = row.positions[0];
  for (const p of row.positions) {
    const v = get(layer, p);
    if (Number.isFinite(v) && !(v <= best)) {
      best = v;
      where = p;
    }
  }
  return { value: best, position: where };
}

/** Keyboard move of a focused cell {panel, layer, row}; layers continue into the next panel. */
export function moveFocus(focus, key, geom) {
  let { panel, layer, row } = focus;
  if (key === "ArrowUp") row = Math.max(0, row - 1);
  else if (key === "ArrowDown") row = Math.min(geom.rows.length - 1, row + 1);
  else if (key === "ArrowLeft") {
    if (layer > 0) layer -= 1;
    else if (panel > 0) [panel, layer] = [panel - 1, geom.nLayers - 1];
  } else if (key === "ArrowRight") {
    if (layer < geom.nLayers - 1) layer += 1;
    else if (panel < geom.nPanels - 1) [panel, layer] = [panel + 1, 0];
  } else return null;
  return { panel, layer, row };
}

/** Patches (row, col) of a grid covered by the box between two grid points, inclusive. */
export function patchesInBox(a, b) {
  const out = [];
  const [r0, r1] = [Math.min(a[0], b[0]), Math.max(a[0], b[0])];
  const [c0, c1] = [Math.min(a[1], b[1]), Math.max(a[1], b[1])];
  for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) out.push([r, c]);
  return out;
}

/** Grid patch (row, col) under a point of an image drawn at width x height, or null. */
export function patchAt(x, y, width, height, rows, cols) {
  if (x < 0 || y < 0 || x >= width || y >= height) return null;
  return [Math.floor((y / height) * rows), Math.floor((x / width) * cols)];
}

/**
 * Left edges of labels of widths `widths` centred on `xs` in a strip `width` wide, pushed apart
 * so that none overlaps (4 px gap) and kept inside the strip (legend marks).
 */
export function labelSpots(xs, widths, width, gap = 4) {
  const spots = xs.map((x, i) => x - widths[i] / 2);
  const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
  const clamp = (i) => Math.min(width - widths[i], Math.max(0, spots[i]));
  for (const [k, i] of order.entries()) {
    spots[i] = clamp(i);
    if (k) spots[i] = Math.max(spots[i], spots[order[k - 1]] + widths[order[k - 1]] + gap);
  }
  for (let k = order.length - 1; k >= 0; k--) {
    const i = order[k];
    const limit = k < order.length - 1 ? spots[order[k + 1]] - widths[i] - gap : width - widths[i];
    spots[i] = Math.min(spots[i], limit);
  }
  return spots;
}

/**
 * Indices of the rows whose label is drawn: every token and band row; image rows (a few px
 * tall) at least `gap` px apart, the rows in `keep` (highlighted or focused) always, each
 * taking precedence over its unkept neighbours.
 */
export function labelledRows(rows, keep = [], gap = 11) {
  const centre = (i) => rows[i].y + rows[i].h / 2;
  const kept = [];
  for (const i of [...new Set(keep)].filter((k) => k >= 0 && k < rows.length).sort((a, b) => a - b)) {
    if (!kept.length || centre(i) - centre(kept[kept.length - 1]) >= gap) kept.push(i);
  }
  const out = new Set(kept);
  let last = -Infinity;
  let next = 0; // index into kept of the first kept row at or below row i
  for (let i = 0; i < rows.length; i++) {
    while (next < kept.length && kept[next] < i) next++;
    if (out.has(i)) {
      last = centre(i);
      continue;
    }
    const below = next < kept.length ? centre(kept[next]) : Infinity;
    if (rows[i].kind !== "image" || (centre(i) - last >= gap && below - centre(i) >= gap)) {
      out.add(i);
      last = centre(i);
    }
  }
  return out;
}

/**
 * What the token axis marks on each row (pure): {corrupted, kind} from `spans`
 * [{start, end, kind, corrupted}] (end exclusive); a row is marked when any of its positions is.
 */
export function rowMarks(rows, spans) {
  return rows.map((row) => {
    const hits = (spans ?? []).filter((s) => row.positions.some((p) => p >= s.start && p < s.end));
    const constraint = hits.find((s) => s.kind === "visual" || s.kind === "textual");
    return { corrupted: hits.some((s) => s.corrupted), kind: constraint?.kind ?? null };
  });
}
