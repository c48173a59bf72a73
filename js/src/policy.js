// One colour policy for every figure (heatmap, patch overlay, static export; mllm_lens/export.py
// mirrors it): which values the colour ramp spans, which marks the legend carries and when the
// figure says in words that its effect is too small to colour. Pure functions, unit-tested.
import { finiteRange } from "./colormap.js";
import { fmt } from "./format.js";

export const POLICIES = {
  anchored: "anchored: corrupted → clean",
  fixed: "fixed 0–1",
  auto: "auto (min–max)",
};
// What the colours show (the heatmap's `value`): p itself, p − corrupted, or ROME's normalised effect.
export const VALUES = {
  score: "probability",
  indirect_effect: "indirect effect",
  normalized: "normalised",
};
// The narrowest span an anchored scale paints (in probability): a smaller effect stays dark.
export const MIN_SPAN = 0.05;
// The smallest |clean − corrupted| the normalised effect divides by: under it the ratio is noise
// blown up to any size, so no normalised value is painted and the legend says why in words.
export const MIN_GAP = 1e-3;

/** Whether `value` is the normalised effect with clean and corrupted p too close to divide by. */
export function gapTooSmall(value, clean, corrupted) {
  return value === "normalized" && clean != null && corrupted != null && Math.abs(clean - corrupted) < MIN_GAP;
}

/**
 * Restored probability → the painted value of `value`: p ("score"), p − corrupted
 * ("indirect_effect"), or (p − corrupted) / (clean − corrupted) ("normalized": 0 at the corrupted,
 * 1 at the clean probability; NaN when the two differ by less than MIN_GAP).
 */
export function painter({ value = "score", clean = null, corrupted = null } = {}) {
  if (value === "indirect_effect" && corrupted != null) return (p) => p - corrupted;
  if (gapTooSmall(value, clean, corrupted)) return () => Number.NaN;
  if (value === "normalized" && clean != null && corrupted != null) return (p) => (p - corrupted) / (clean - corrupted);
  return (p) => p;
}

function widen(lo, hi) {
  if (hi - lo >= MIN_SPAN) return [lo, hi];
  const top = lo + MIN_SPAN;
  return top <= 1 || lo < 0 ? [lo, top] : [1 - MIN_SPAN, 1];
}

function anchoredRange(value, clean, corrupted, data) {
  if (clean == null || corrupted == null) {
    // values of unknown units (a generic overlay): from 0, fixed by the data it was given
    const [lo, hi] = finiteRange(data);
    return [Math.min(0, lo), Math.max(0, hi) > Math.min(0, lo) ? Math.max(0, hi) : 1];
  }
  if (value === "normalized") return [0, 1];
  const [a, b] = value === "indirect_effect" ? [0, clean - corrupted] : [corrupted, clean];
  return widen(Math.min(a, b), Math.max(a, b));
}

/**
 * The colour range {lo, hi} of a figure, in the units it is painted in (`data` already in them).
 * anchored (default): p from the corrupted to the clean probability, or indirect effect from 0 to
 *   clean − corrupted, at least MIN_SPAN wide, or the normalised effect from 0 to 1; it depends on
 *   the two probabilities only, so it is fixed before a live fill starts and never re-stretches
 *   while cells arrive;
 * fixed: 0 to 1; auto: the finite min–max of `data`. `vmin` / `vmax`, when set, replace an end.
 */
export function colorRange({ policy = "anchored", value = "score", clean = null, corrupted = null, data = [], vmin = null, vmax = null }) {
  let [lo, hi] = [0, 1];
  if (policy === "auto") [lo, hi] = finiteRange(data);
  else if (policy !== "fixed") [lo, hi] = anchoredRange(value, clean, corrupted, data);
  lo = vmin ?? lo;
  hi = vmax ?? hi;
  return { lo, hi: hi > lo ? hi : lo + 1e-9 };
}

/** Where the corrupted and clean probabilities sit on the legend: [{label, value, t}], t in [0, 1]. */
export function legendMarks({ value = "score", clean, corrupted, lo, hi }) {
  if (clean == null || corrupted == null) return [];
  const paint = painter({ value, clean, corrupted });
  return [
    ["corrupted", corrupted],
    ["clean", clean],
  ]
    .map(([label, p]) => ({ label, value: p, t: Math.min(1, Math.max(0, (paint(p) - lo) / (hi - lo))) }))
    .filter((mark) => Number.isFinite(mark.t));
}

/** The legend's unit and the line under it that defines what the colours show (`value`), in words. */
export function valueWords(value, target) {
  const p = `p(${target || "answer"})`;
  if (value === "indirect_effect") return { unit: "indirect effect", definition: `indirect effect = restored ${p} − corrupted ${p}` };
  if (value === "normalized") {
    return { unit: "normalised effect", definition: `normalised = (restored − corrupted) / (clean − corrupted) ${p}: 0 = corrupted, 1 = clean (ROME)` };
  }
  return { unit: p, definition: `${p} with the cell's state restored from the clean run` };
}

/**
 * The words a figure shows when restoring changes p(answer) by less than MIN_SPAN (null
 * otherwise): "restoring changes p(answer) by at most 0.006". `scores` are probabilities.
 */
export function smallEffectNote(scores, corrupted, { partial = false } = {}) {
  if (corrupted == null) return null;
  let most = -Infinity;
  for (const v of scores ?? []) if (Number.isFinite(v)) most = Math.max(most, Math.abs(v - corrupted));
  if (!(most >= 0) || most >= MIN_SPAN) return null;
  const sofar = partial ? " so far" : "";
  return `restoring changes p(answer) by at most ${fmt(most)}${sofar}: too small to colour (the scale spans at least ${MIN_SPAN})`;
}

/**
 * The normalised effect's caveat (null for other values or a clear gap): it divides by clean −
 * corrupted, so a gap under MIN_SPAN magnifies small changes to the whole scale, and under MIN_GAP
 * the ratio means nothing: then these words stand in for the colour scale (gapTooSmall).
 */
export function gapNote(value, clean, corrupted) {
  if (value !== "normalized" || clean == null || corrupted == null) return null;
  const gap = Math.abs(clean - corrupted);
  const instead = "no normalised effect is shown; choose probability or indirect effect";
  if (gap === 0) return `clean and corrupted p are equal (${fmt(clean)}): ${instead}`;
  if (gap < MIN_GAP) return `clean and corrupted p differ by only ${gap.toPrecision(1)} (under ${MIN_GAP}), too little to divide by: ${instead}`;
  return gap < MIN_SPAN ? `clean and corrupted p differ by only ${fmt(gap)}: normalising stretches that small change over the scale` : null;
}

/** The legend's accessible summary: ends, policy, and the clean / corrupted marks. */
export function legendSummary(unit, { lo, hi }, policy, marks) {
  const where = marks.map((m) => `${m.label} ${fmt(m.value)}`).join(", ");
  return `colour scale of ${unit} from ${fmt(lo)} to ${fmt(hi)} (${POLICIES[policy] ?? policy})${where ? `; ${where}` : ""}`;
}

/** The model's `scale` policy; "anchored" for a state saved before the trait existed. */
export function policyOf(model) {
  const name = model.get("scale");
  return name in POLICIES ? name : "anchored";
}
