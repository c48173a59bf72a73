// What the widgets say in the page, in plain words (unit-tested). Errors raised in the kernel are
// worded there (mllm_lens/widgets/_errors.py); these are the ones the page words itself.
import { fmt, sizeText } from "./format.js";

/** The upload box's message for a file over the kernel's limit. */
export function uploadTooLarge(name, size, limit) {
  return `“${name}” is ${sizeText(size)}; the limit is ${sizeText(limit)}. Pick a smaller image.`;
}

/** The heatmap readout before any hover: what a click does, or that it does nothing here. */
export function heatmapHint(clickable) {
  return clickable
    ? "Hover a cell to read it; click it (or press Enter) to re-run that restoration."
    : "Hover a cell to read its value. No kernel session is behind this figure, so a click only selects a cell.";
}

/** The overlay readout before any hover. */
export function overlayHint(clickable) {
  return clickable
    ? "Click a patch or drag a box to compute its layer curve (Enter on a focused patch)."
    : "Hover a patch to read its value; clicks only select patches (this overlay has no on_patch callback).";
}

/** A readout after a click: "· running…" only when a kernel will answer. */
export function clickedText(text, clickable) {
  return clickable ? `${text} · running…` : text;
}

/** The error shown when the kernel's data cannot be decoded (details: the decoder's message). */
export function unreadable(what) {
  return `Cannot show the ${what}: the data sent by the kernel is unreadable.`;
}

/**
 * The heatmap's title: the question, the target answer, the corruption and the two
 * probabilities the colours are anchored to. Missing parts are left out.
 */
export function traceTitle({ question = "", target = "", corruption = "", clean, corrupted }) {
  const asked = question ? `“${question}” → ` : "target ";
  const how = corruption ? ` · corrupted by ${corruption}` : "";
  return `${asked}${JSON.stringify(target)}${how} · clean p ${fmt(clean)} · corrupted p ${fmt(corrupted)}`;
}

/**
 * The text above a downloaded PNG, in the SVG export's order: the title, the axis key, what the
 * colours show (unless plain p) and the legend's note (e.g. why no colour scale is drawn).
 */
export function figureLines({ title = "", key = "", value = "score", definition = "", note = "" }) {
  return [title, key, value === "score" ? "" : definition, note].filter(Boolean);
}

/**
 * The key to the token axis's marks, as parts [{kind, text}]: "*" rows were corrupted (kind
 * "corrupted"), a bar marks each constraint kind's phrases (kind "visual" / "textual").
 */
export function axisKey(spans, corruption) {
  const parts = [];
  if ((spans ?? []).some((s) => s.corrupted)) parts.push({ kind: "corrupted", text: `* corrupted${corruption ? ` (${corruption})` : ""}` });
  for (const kind of ["visual", "textual"]) {
    const phrases = (spans ?? []).filter((s) => s.kind === kind).map((s) => `“${s.text}”`);
    if (phrases.length) parts.push({ kind, text: `${kind} constraint ${phrases.join(", ")}` });
  }
  return parts;
}
