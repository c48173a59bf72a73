import { describe, expect, it } from "vitest";
import { scale } from "../src/colormap.js";
import { curveRange, curveWords, curvePoints } from "../src/curve.js";
import { resultCell } from "../src/heatmap.js";
import { buildRows } from "../src/layout.js";
import { corruptionLine, heatCells, legendCaption, overlayNote, paintHeatGrid } from "../src/overlay.js";
import { MIN_SPAN, colorRange } from "../src/policy.js";
import { drawLegend } from "../src/style.js";

/** A 2d context that records every fillRect with the fill style and alpha it was drawn with. */
function recorder() {
  const rects = [];
  const state = { fillStyle: "", globalAlpha: 1 };
  const calls = new Set();
  const ctx = new Proxy(state, {
    get(target, key) {
      if (key in target) return target[key];
      if (key === "fillRect") return (x, y, w, h) => rects.push({ x, y, w, h, fill: target.fillStyle, alpha: target.globalAlpha });
      if (key === "measureText") return (text) => ({ width: 5 * String(text).length });
      return (...args) => calls.add(key) && args;
    },
    set(target, key, value) {
      target[key] = value;
      return true;
    },
  });
  return { ctx, rects, calls };
}

function fakeCanvas(ctx) {
  return { style: {}, dataset: {}, getContext: () => ctx };
}

// indirect effect of a trace with clean 0.9, corrupted 0.1: the anchored range is 0 → 0.8
const range = colorRange({ value: "indirect_effect", clean: 0.9, corrupted: 0.1 });
const colorOf = scale("viridis", range.lo, range.hi);
const LEGEND_WIDTH = 220;
const legendValue = (i) => range.lo + ((range.hi - range.lo) * i) / (LEGEND_WIDTH - 1);

describe("patch overlay colours", () => {
  it("fills each cell, opaque, with the legend's colour for its value", () => {
    const pixels = [0, 40, 110, 180, 219];
    const data = Float32Array.from([...pixels.map(legendValue), Number.NaN]);
    const values = { data, shape: [1, 2, 3] };
    const legend = recorder();
    drawLegend(fakeCanvas(legend.ctx), colorOf, range);
    const ramp = legend.rects.filter((r) => r.w === 1);
    expect(ramp).toHaveLength(LEGEND_WIDTH);
    const grid = recorder();
    grid.ctx.globalAlpha = 0.6; // what the old overlay blended with
    paintHeatGrid(grid.ctx, heatCells(values, 0, colorOf), 10, 10);
    expect(grid.rects).toHaveLength(6);
    for (const [k, i] of pixels.entries()) {
      const cell = grid.rects[k];
      expect(cell.alpha).toBe(1);
      expect(cell.fill).toBe(ramp[i].fill);
    }
    expect(grid.rects[5].fill).toBe("rgb(220,220,220)"); // a patch without a value is grey, not a ramp colour
    expect(grid.calls.has("drawImage")).toBe(false); // the photo is never under a cell
  });

  it("places cells on the grid row by row", () => {
    const values = { data: Float32Array.from([0, 0.1, 0.2, 0.3, 9, 9, 9, 9]), shape: [2, 2, 2] };
    const cells = heatCells(values, 1, colorOf);
    expect(cells.map(({ r, c, value }) => [r, c, value])).toEqual([[0, 0, 9], [0, 1, 9], [1, 0, 9], [1, 1, 9]]);
    const g = recorder();
    paintHeatGrid(g.ctx, heatCells(values, 0, colorOf), 8, 5);
    expect(g.rects.map(({ x, y }) => [x, y])).toEqual([[0, 0], [8, 0], [0, 5], [8, 5]]);
  });

  it("says what the colours are and which corruption was used", () => {
    expect(legendCaption("indirect effect of restoring the patch's hidden state", 3)).toBe("colour: indirect effect of restoring the patch's hidden state · layer 3");
    expect(legendCaption("", 0)).not.toMatch(/patch value/);
    expect(corruptionLine("image noise on all visual tokens (the heatmap above used noise on 'this country')")).toBe(
      "patches traced under image noise on all visual tokens (the heatmap above used noise on 'this country')",
    );
    expect(corruptionLine("")).toBe("");
  });
});

describe("small patch effects", () => {
  it("are said in words, as the heatmap says them, instead of trusted to the colour", () => {
    // notebook 05: the largest patch effect is 0.021 of a clean − corrupted gap of 0.8
    const values = Float32Array.from([0.001, -0.004, 0.021, Number.NaN]);
    expect(overlayNote(values, 0.9, 0.1)).toBe("restoring changes p(answer) by at most 0.021: too small to colour (the scale spans at least 0.05)");
    expect(overlayNote(Float32Array.from([0.001, 0.3]), 0.9, 0.1)).toBeNull();
    expect(overlayNote(values, null, null)).toBeNull(); // values of unknown units: no claim about p
  });
});

describe("layer curve", () => {
  it("anchors its y-axis at corrupted → clean, not at the curve's own min–max", () => {
    const flat = [0.098, 0.1, 0.101, 0.099];
    const y = curveRange(flat, { clean: 0.9, corrupted: 0.1 });
    expect(y.lo).toBeCloseTo(0.098, 6);
    expect(y.hi).toBeCloseTo(0.9, 6);
    const { pts } = curvePoints(flat, 100, 100, 0, y);
    const spread = Math.max(...pts.map((p) => p[1])) - Math.min(...pts.map((p) => p[1]));
    expect(spread).toBeLessThan(1); // 0.098–0.101 is a flat line, not a collapse across the plot
  });

  it("keeps a tiny clean–corrupted gap at least MIN_SPAN tall and keeps every point inside", () => {
    const y = curveRange([0.93, 0.931], { clean: 0.933, corrupted: 0.927 });
    expect(y.hi - y.lo).toBeGreaterThanOrEqual(MIN_SPAN - 1e-12);
    const over = curveRange([0.2, 0.95], { clean: 0.9, corrupted: 0.1 });
    expect([over.lo, over.hi]).toEqual([0.1, 0.95]);
    expect(curveRange([0.4, 0.5])).toEqual({ lo: 0, hi: 1 }); // no probabilities: 0–1
  });

  it("is titled with what it plots", () => {
    expect(curveWords("Brasilia")).toEqual({ title: "restored p(Brasilia) per layer", yLabel: "p(Brasilia)" });
    expect(curveWords("").title).toBe("restored p(answer) per layer");
  });
});

describe("heatmap readout after a result", () => {
  it("describes the result's own cell, not row 0 of panel 0", () => {
    const labels = ["<s>", "<img 0,0>", "<img 0,1>", "what", "is", "this"];
    const geom = { rows: buildRows(labels, [1, 3], false).rows };
    expect(resultCell({ panel: 1, layer: 2, position: 4 }, geom)).toEqual({ panel: 1, layer: 2, row: 3 });
    expect(resultCell({ panel: 1, layer: 2, position: 9 }, geom)).toBeNull();
    expect(resultCell({ panel: 0, layer: 0, position: 2 }, geom).row).toBe(1); // inside the image band
  });
});
