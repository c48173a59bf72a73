import { describe, expect, it } from "vitest";
import { scale } from "../src/colormap.js";
import { MIN_GAP, MIN_SPAN, colorRange, gapNote, gapTooSmall, legendMarks, legendSummary, painter, policyOf, smallEffectNote, valueWords } from "../src/policy.js";

const brightness = (css) => {
  const [r, g, b] = css.match(/\d+/g).map(Number);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};

// A trace whose corruption barely moves p(answer): clean 0.933, corrupted 0.927 (the case).
const tiny = { clean: 0.933, corrupted: 0.927 };
const tinyScores = Float32Array.from([0.927, 0.929, 0.931, 0.933, Number.NaN]);

describe("colour policy", () => {
  it("does not paint a 0.006-range trace at full scale", () => {
    const range = colorRange({ ...tiny, data: tinyScores });
    const colorOf = scale("viridis", range.lo, range.hi);
    expect(range.hi - range.lo).toBeCloseTo(MIN_SPAN, 9);
    expect((0.933 - range.lo) / (range.hi - range.lo)).toBeLessThan(0.15);
    expect(brightness(colorOf(0.933))).toBeLessThan(brightness(colorOf(range.hi)) / 2);
  });

  it("auto is min–max, so the same trace fills the whole ramp there", () => {
    const range = colorRange({ ...tiny, policy: "auto", data: tinyScores });
    expect(range).toEqual({ lo: Math.fround(0.927), hi: Math.fround(0.933) });
  });

  it("anchors probability at corrupted → clean and indirect effect at 0 → clean − corrupted", () => {
    expect(colorRange({ clean: 0.9, corrupted: 0.1 })).toEqual({ lo: 0.1, hi: 0.9 });
    const ie = colorRange({ value: "indirect_effect", clean: 0.9, corrupted: 0.1 });
    expect(ie.lo).toBe(0);
    expect(ie.hi).toBeCloseTo(0.8, 12);
    expect(colorRange({ policy: "fixed", clean: 0.9, corrupted: 0.1 })).toEqual({ lo: 0, hi: 1 });
  });

  it("keeps a widened anchored scale inside [0, 1] when the corrupted value is near 1", () => {
    const range = colorRange({ clean: 0.99, corrupted: 0.98 });
    expect(range.hi).toBe(1);
    expect(range.hi - range.lo).toBeCloseTo(MIN_SPAN, 12);
  });

  it("does not change the scale while a live fill arrives", () => {
    const empty = new Float32Array(12).fill(Number.NaN);
    const half = Float32Array.from(empty, (v, i) => (i < 6 ? 0.1 + 0.05 * i : v));
    const full = Float32Array.from({ length: 12 }, (_, i) => 0.1 + 0.07 * i);
    const ranges = [empty, half, full].map((data) => colorRange({ clean: 0.8, corrupted: 0.1, data }));
    expect(ranges[1]).toEqual(ranges[0]);
    expect(ranges[2]).toEqual(ranges[0]);
  });

  it("lets vmin / vmax replace an end", () => {
    expect(colorRange({ clean: 0.8, corrupted: 0.1, vmin: 0, vmax: 0.5 })).toEqual({ lo: 0, hi: 0.5 });
  });

  it("anchors values of unknown units at 0 (a generic overlay)", () => {
    expect(colorRange({ data: Float32Array.from([0.2, 0.5]) })).toEqual({ lo: 0, hi: 0.5 });
    expect(colorRange({ data: Float32Array.from([-0.25, 0.5]) })).toEqual({ lo: -0.25, hi: 0.5 });
  });
});

describe("legend", () => {
  it("ends at the anchored range and marks corrupted and clean at its ends", () => {
    const range = colorRange({ clean: 0.9, corrupted: 0.1 });
    const marks = legendMarks({ clean: 0.9, corrupted: 0.1, ...range });
    expect(marks).toEqual([
      { label: "corrupted", value: 0.1, t: 0 },
      { label: "clean", value: 0.9, t: 1 },
    ]);
    expect(legendSummary("p(x)", range, "anchored", marks)).toBe(
      "colour scale of p(x) from 0.100 to 0.900 (anchored: corrupted → clean); corrupted 0.100, clean 0.900",
    );
  });

  it("places the marks in painted units for indirect effect and clamps them to the ramp", () => {
    const marks = legendMarks({ value: "indirect_effect", clean: 0.6, corrupted: 0.2, lo: 0, hi: 1 });
    expect(marks.map((m) => m.t)).toEqual([0, expect.closeTo(0.4, 12)]);
    expect(legendMarks({ clean: 0.9, corrupted: 0.1, lo: 0.2, hi: 0.5 }).map((m) => m.t)).toEqual([0, 1]);
    expect(legendMarks({ clean: null, corrupted: 0.1, lo: 0, hi: 1 })).toEqual([]);
  });
});

describe("normalised score (ROME)", () => {
  it("paints (p − corrupted) / (clean − corrupted): corrupted at 0, clean at 1, NaN without a gap", () => {
    const paint = painter({ value: "normalized", clean: 0.9, corrupted: 0.1 });
    expect([0.1, 0.5, 0.9].map(paint)).toEqual([0, 0.5, expect.closeTo(1, 12)]);
    expect(painter({ value: "indirect_effect", clean: 0.9, corrupted: 0.1 })(0.5)).toBeCloseTo(0.4, 12);
    expect(painter({ value: "score", clean: 0.9, corrupted: 0.1 })(0.5)).toBe(0.5);
    expect(painter({ value: "normalized", clean: 0.4, corrupted: 0.4 })(0.5)).toBeNaN();
  });

  it("is anchored at 0–1, whatever the two probabilities", () => {
    expect(colorRange({ value: "normalized", clean: 0.9, corrupted: 0.1 })).toEqual({ lo: 0, hi: 1 });
    expect(colorRange({ value: "normalized", ...tiny })).toEqual({ lo: 0, hi: 1 });
    const data = Float32Array.from([0.1, 0.5]).map(painter({ value: "normalized", clean: 0.9, corrupted: 0.1 }));
    expect(colorRange({ value: "normalized", clean: 0.9, corrupted: 0.1, policy: "auto", data }).hi).toBeCloseTo(0.5, 6);
  });

  it("marks corrupted and clean at the legend's ends and defines itself under the legend", () => {
    const marks = legendMarks({ value: "normalized", clean: 0.9, corrupted: 0.1, lo: 0, hi: 1 });
    expect(marks.map((m) => [m.label, m.value, m.t])).toEqual([
      ["corrupted", 0.1, 0],
      ["clean", 0.9, expect.closeTo(1, 12)],
    ]);
    expect(legendMarks({ value: "normalized", clean: 0.4, corrupted: 0.4, lo: 0, hi: 1 })).toEqual([]);
    expect(valueWords("normalized", "Paris")).toEqual({
      unit: "normalised effect",
      definition: "normalised = (restored − corrupted) / (clean − corrupted) p(Paris): 0 = corrupted, 1 = clean (ROME)",
    });
    expect(valueWords("indirect_effect", "Paris").definition).toBe("indirect effect = restored p(Paris) − corrupted p(Paris)");
    expect(valueWords("score", "Paris").unit).toBe("p(Paris)");
  });

  it("says in words when a small clean − corrupted gap is stretched over the scale", () => {
    expect(gapNote("normalized", tiny.clean, tiny.corrupted)).toBe(
      "clean and corrupted p differ by only 0.006: normalising stretches that small change over the scale",
    );
    expect(gapNote("normalized", 0.9, 0.1)).toBeNull();
    expect(gapNote("score", tiny.clean, tiny.corrupted)).toBeNull();
  });

  it("paints nothing and says why in words when clean and corrupted p differ by under MIN_GAP", () => {
    const near = { clean: 0.5004, corrupted: 0.5 }; // a 4e-4 gap: (p − corrupted) / gap would read noise as effect
    expect(MIN_GAP).toBe(1e-3);
    expect(gapTooSmall("normalized", near.clean, near.corrupted)).toBe(true);
    expect(gapTooSmall("score", near.clean, near.corrupted)).toBe(false);
    expect(gapTooSmall("normalized", 0.5 + MIN_GAP, 0.5)).toBe(false);
    expect(painter({ value: "normalized", ...near })(0.6)).toBeNaN();
    expect(painter({ value: "normalized", clean: 0.4, corrupted: 0.4 })(0.5)).toBeNaN();
    expect(painter({ value: "normalized", clean: 0.502, corrupted: 0.5 })(0.501)).toBeCloseTo(0.5, 9);
    expect(painter({ value: "score", ...near })(0.6)).toBe(0.6);
    expect(legendMarks({ value: "normalized", ...near, lo: 0, hi: 1 })).toEqual([]);
    expect(gapNote("normalized", near.clean, near.corrupted)).toBe(
      "clean and corrupted p differ by only 0.0004 (under 0.001), too little to divide by: no normalised effect is shown; choose probability or indirect effect",
    );
    expect(gapNote("normalized", 0.4, 0.4)).toBe("clean and corrupted p are equal (0.400): no normalised effect is shown; choose probability or indirect effect");
  });
});

describe("small effects are said in words", () => {
  it("names the largest change of p(answer) when it is below the smallest painted span", () => {
    expect(smallEffectNote(tinyScores, 0.927)).toBe(
      "restoring changes p(answer) by at most 0.006: too small to colour (the scale spans at least 0.05)",
    );
    expect(smallEffectNote(tinyScores, 0.927, { partial: true })).toContain("at most 0.006 so far");
  });

  it("says nothing for a clear effect or before any cell is known", () => {
    expect(smallEffectNote(Float32Array.from([0.1, 0.7]), 0.1)).toBeNull();
    expect(smallEffectNote(Float32Array.from([Number.NaN]), 0.1)).toBeNull();
    expect(smallEffectNote(tinyScores, null)).toBeNull();
  });
});

describe("policy of a saved state", () => {
  it("falls back to anchored for a missing or unknown scale", () => {
    const model = (scale) => ({ get: () => scale });
    expect(policyOf(model("auto"))).toBe("auto");
    expect(policyOf(model(undefined))).toBe("anchored");
    expect(policyOf(model("rainbow"))).toBe("anchored");
  });
});
