import { describe, expect, it } from "vitest";
import { COLORMAPS, NAN_COLOR, finiteRange, makeLut, rgbAt, scale } from "../src/colormap.js";

describe("colour maps", () => {
  it("hits viridis's end points and clamps outside [0, 1]", () => {
    expect(rgbAt("viridis", 0)).toEqual([68, 1, 84]);
    expect(rgbAt("viridis", 1)).toEqual([253, 231, 37]);
    expect(rgbAt("viridis", -3)).toEqual([68, 1, 84]);
    expect(rgbAt("viridis", 7)).toEqual([253, 231, 37]);
  });

  it("interpolates linearly between control points", () => {
    const stops = COLORMAPS.cividis;
    const mid = rgbAt("cividis", 0.5 / (stops.length - 1));
    expect(mid).toEqual(stops[0].map((c, k) => Math.round((c + stops[1][k]) / 2)));
  });

  it("is monotone in lightness (sequential, colour-blind safe)", () => {
    const luma = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;
    for (const name of ["viridis", "cividis"]) {
      const values = Array.from({ length: 50 }, (_, i) => luma(rgbAt(name, i / 49)));
      for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1]);
    }
  });

  it("maps values through a range, NaN to grey, unknown names to viridis", () => {
    const colorOf = scale("viridis", 0, 2);
    expect(colorOf(0)).toBe("rgb(68,1,84)");
    expect(colorOf(2)).toBe("rgb(253,231,37)");
    expect(colorOf(99)).toBe("rgb(253,231,37)");
    expect(colorOf(Number.NaN)).toBe(NAN_COLOR);
    expect(makeLut("nope", 2)).toEqual(makeLut("viridis", 2));
  });

  it("finds the finite range", () => {
    expect(finiteRange(new Float32Array([Number.NaN, 3, -1, Number.POSITIVE_INFINITY]))).toEqual([-1, 3]);
    expect(finiteRange(new Float32Array([Number.NaN]))).toEqual([0, 1]);
  });
});
