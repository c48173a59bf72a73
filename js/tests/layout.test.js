import { describe, expect, it } from "vitest";
import { curvePoints } from "../src/curve.js";
import { buildRows, cellOrigin, hitTest, labelSpots, labelledRows, moveFocus, patchAt, patchesInBox, rowAt, rowMarks, rowValue } from "../src/layout.js";

const labels = ["<s>", ...Array.from({ length: 600 }, (_, i) => `<img ${Math.floor(i / 24)},${i % 24}>`), "what", "is", "this"];

describe("image band", () => {
  it("collapses the image span into one row", () => {
    const { rows, height } = buildRows(labels, [1, 601], false, { rowHeight: 10 });
    expect(rows.map((r) => r.kind)).toEqual(["token", "band", "token", "token", "token"]);
    expect(rows[1].positions).toHaveLength(600);
    expect(rows[1].positions[0]).toBe(1);
    expect(rows[2].positions).toEqual([601]);
    expect(height).toBe(50);
  });

  it("expands to one short row per image position", () => {
    const { rows, height } = buildRows(labels, [1, 601], true, { rowHeight: 10, imageRowHeight: 2 });
    expect(rows).toHaveLength(604);
    expect(rows[600].label).toBe("<img 24,23>");
    expect(height).toBe(4 * 10 + 600 * 2);
  });

  it("has no band without an image span", () => {
    expect(buildRows(["a", "b"], [0, 0], false).rows.map((r) => r.kind)).toEqual(["token", "token"]);
  });

  it("reads a band's value as its best finite score and where it is", () => {
    const { rows } = buildRows(["x", "i0", "i1", "i2"], [1, 4], false);
    const scores = { 1: 0.2, 2: Number.NaN, 3: 0.7 };
    expect(rowValue(rows[1], 0, (_, p) => scores[p])).toEqual({ value: 0.7, position: 3 });
    expect(Number.isNaN(rowValue(rows[1], 0, () => Number.NaN).value)).toBe(true);
  });
});

describe("hit testing", () => {
  const { rows } = buildRows(labels, [1, 601], false, { rowHeight: 10 });
  const geom = { left: 100, top: 20, cw: 8, nLayers: 32, nPanels: 3, gap: 14, rows };

  it("finds rows by binary search", () => {
    expect(rowAt(rows, 0)).toBe(0);
    expect(rowAt(rows, 9.99)).toBe(0);
    expect(rowAt(rows, 10)).toBe(1);
    expect(rowAt(rows, 49)).toBe(4);
    expect(rowAt(rows, 50)).toBe(-1);
    expect(rowAt(rows, -1)).toBe(-1);
  });

  it("maps points to (panel, layer, row) and back", () => {
    expect(hitTest(geom, 100, 20)).toEqual({ panel: 0, layer: 0, row: 0 });
    expect(hitTest(geom, 100 + 31 * 8 + 7, 35)).toEqual({ panel: 0, layer: 31, row: 1 });
    expect(hitTest(geom, 100 + 32 * 8 + 3, 35)).toBeNull(); // in the gap
    expect(hitTest(geom, 100 + 2 * (256 + 14) + 5 * 8 + 1, 61)).toEqual({ panel: 2, layer: 5, row: 4 });
    expect(hitTest(geom, 99, 30)).toBeNull();
    expect(hitTest(geom, 100 + 3 * (256 + 14), 30)).toBeNull();
    expect(hitTest(geom, 120, 19)).toBeNull();
    for (const cell of [{ panel: 1, layer: 7, row: 3 }, { panel: 2, layer: 31, row: 0 }]) {
      const { x, y } = cellOrigin(geom, cell.panel, cell.layer, cell.row);
      expect(hitTest(geom, x + 1, y + 1)).toEqual(cell);
    }
  });

  it("moves a keyboard focus across layers, panels and rows, clamped", () => {
    expect(moveFocus({ panel: 0, layer: 31, row: 0 }, "ArrowRight", geom)).toEqual({ panel: 1, layer: 0, row: 0 });
    expect(moveFocus({ panel: 1, layer: 0, row: 0 }, "ArrowLeft", geom)).toEqual({ panel: 0, layer: 31, row: 0 });
    expect(moveFocus({ panel: 0, layer: 0, row: 0 }, "ArrowUp", geom)).toEqual({ panel: 0, layer: 0, row: 0 });
    expect(moveFocus({ panel: 2, layer: 31, row: 4 }, "ArrowDown", geom)).toEqual({ panel: 2, layer: 31, row: 4 });
    expect(moveFocus({ panel: 2, layer: 31, row: 4 }, "ArrowRight", geom)).toEqual({ panel: 2, layer: 31, row: 4 });
    expect(moveFocus({ panel: 0, layer: 0, row: 0 }, "x", geom)).toBeNull();
  });
});

describe("patch grid", () => {
  it("maps image points to patches", () => {
    expect(patchAt(0, 0, 100, 50, 4, 4)).toEqual([0, 0]);
    expect(patchAt(99.9, 49.9, 100, 50, 4, 4)).toEqual([3, 3]);
    expect(patchAt(30, 20, 100, 50, 4, 4)).toEqual([1, 1]);
    expect(patchAt(100, 10, 100, 50, 4, 4)).toBeNull();
  });

  it("lists the patches of a dragged box in either direction", () => {
    expect(patchesInBox([1, 2], [0, 1])).toEqual([[0, 1], [0, 2], [1, 1], [1, 2]]);
    expect(patchesInBox([2, 2], [2, 2])).toEqual([[2, 2]]);
  });

  it("scales curve points into a box, skipping NaN", () => {
    const { pts, lo, hi } = curvePoints([0, 1, Number.NaN, 0.5], 100, 50, 0);
    expect([lo, hi]).toEqual([0, 1]);
    expect(pts.map(([x, y]) => [Math.round(x * 1000) / 1000, y])).toEqual([[0, 50], [33.333, 0], [100, 25]]);
  });
});

describe("legend mark labels", () => {
  it("centres labels that fit and pushes close ones apart inside the strip", () => {
    expect(labelSpots([50, 150], [20, 20], 220)).toEqual([40, 140]);
    const [a, b] = labelSpots([0, 3], [40, 30], 220);
    expect(a).toBe(0);
    expect(b).toBe(44);
    const [c, d] = labelSpots([219, 218], [40, 30], 220);
    expect(d + 30 + 4).toBeLessThanOrEqual(c);
    expect(c + 40).toBeLessThanOrEqual(220);
  });
});

describe("token axis labels", () => {
  const image = (n, h) => buildRows(["<s>", ...Array.from({ length: n }, (_, i) => `<img ${i}>`), "q"], [1, n + 1], true, { imageRowHeight: h }).rows;

  it("labels a highlighted image row even between the regularly spaced labels", () => {
    const rows = image(600, 2);
    const plain = labelledRows(rows);
    const highlighted = 1 + 3; // <img 3>: between the labels of <img 1> and <img 7>
    expect(plain.has(highlighted)).toBe(false);
    const shown = labelledRows(rows, [highlighted]);
    expect(shown.has(highlighted)).toBe(true);
    const centres = [...shown].filter((i) => rows[i].kind === "image").map((i) => rows[i].y + rows[i].h / 2).sort((a, b) => a - b);
    for (let k = 1; k < centres.length; k++) expect(centres[k] - centres[k - 1]).toBeGreaterThanOrEqual(11);
  });

  it("labels every image row that is tall enough, and every token row", () => {
    const rows = image(8, 12);
    expect(labelledRows(rows).size).toBe(rows.length);
  });

  it("keeps highlighted labels apart when several highlighted rows touch", () => {
    const rows = image(600, 2);
    const shown = labelledRows(rows, [10, 11, 12, 20]);
    expect(shown.has(10) && !shown.has(11) && !shown.has(12) && shown.has(20)).toBe(true);
  });
});

describe("token axis marks", () => {
  it("marks constraint and corrupted rows, the band when any image position is corrupted", () => {
    const { rows } = buildRows(["<s>", "i0", "i1", "what", "this", "country"], [1, 3], false);
    const spans = [
      { start: 4, end: 6, kind: "visual", corrupted: true },
      { start: 1, end: 3, kind: "image", corrupted: false },
    ];
    expect(rowMarks(rows, spans)).toEqual([
      { corrupted: false, kind: null },
      { corrupted: false, kind: null },
      { corrupted: false, kind: null },
      { corrupted: true, kind: "visual" },
      { corrupted: true, kind: "visual" },
    ]);
    expect(rowMarks(rows, [{ start: 1, end: 3, kind: "image", corrupted: true }])[1]).toEqual({ corrupted: true, kind: null });
  });
});
