// Colour-blind-safe sequential colour maps, computed here (no CSS or image assets).
// Control points sampled from matplotlib's viridis and cividis (CC0); linear in between.

export const COLORMAPS = {
  viridis: [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
  ],
  cividis: [
    [0, 34, 78], [18, 53, 112], [59, 73, 108], [87, 93, 109], [112, 113, 115],
    [138, 134, 120], [165, 156, 116], [195, 179, 105], [225, 204, 85], [254, 232, 56],
  ],
  greys: [[250, 250, 250], [20, 20, 20]],
};

export const NAN_COLOR = "rgb(220,220,220)";

/** RGB triple for t in [0, 1] (clamped) on colour map `name`. */
export function rgbAt(name, t) {
  const stops = COLORMAPS[name] ?? COLORMAPS.viridis;
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
}

/** A 256-entry lookup table of CSS colour strings. */
export function makeLut(name, size = 256) {
  const lut = new Array(size);
  for (let i = 0; i < size; i++) {
    const [r, g, b] = rgbAt(name, i / (size - 1));
    lut[i] = `rgb(${r},${g},${b})`;
  }
  return lut;
}

/** A colour function value -> CSS colour for the range [vmin, vmax]; NaN -> grey. */
export function scale(name, vmin, vmax) {
  const lut = makeLut(name);
  const span = vmax > vmin ? vmax - vmin : 1;
  return (v) => {
    if (!Number.isFinite(v)) return NAN_COLOR;
    const t = Math.min(1, Math.max(0, (v - vmin) / span));
    return lut[Math.round(t * (lut.length - 1))];
  };
}

/** Finite min and max of a typed array (fallback [0, 1]). */
export function finiteRange(data) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of data) {
    if (Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : [0, 1];
}
