// Constraint spans over question tokens: [{start, end, kind}], end exclusive, disjoint, sorted.
// Clicking a token toggles it in the current mode ("visual" / "textual"); a marked token joins
// the span of its kind that ends just before or starts just after it; unmarking a token in the
// middle of a span splits it. Shift+click marks a whole range.

const byStart = (a, b) => a.start - b.start;

/** Spans with tokens lo..hi (inclusive) taken out, splitting any span they cut. */
export function clearRange(spans, lo, hi) {
  const out = [];
  for (const s of spans) {
    if (s.end <= lo || s.start > hi) out.push({ ...s });
    else {
      if (s.start < lo) out.push({ ...s, end: lo });
      if (s.end > hi + 1) out.push({ ...s, start: hi + 1 });
    }
  }
  return out.sort(byStart);
}

/** Spans plus tokens lo..hi (inclusive, assumed unmarked) as `kind`, merged with touching spans of that kind. */
export function addRange(spans, lo, hi, kind) {
  const before = spans.find((s) => s.kind === kind && s.end === lo);
  const after = spans.find((s) => s.kind === kind && s.start === hi + 1);
  const rest = spans.filter((s) => s !== before && s !== after).map((s) => ({ ...s }));
  rest.push({ start: before ? before.start : lo, end: after ? after.end : hi + 1, kind });
  return rest.sort(byStart);
}

/** The span holding token `index`, or undefined. */
export function spanAt(spans, index) {
  return spans.find((s) => s.start <= index && index < s.end);
}

/** Click on token `index` in `mode`: unmark it if it is marked in that mode, else mark it so. */
export function toggleToken(spans, index, mode) {
  const hit = spanAt(spans, index);
  const cleared = clearRange(spans, index, index);
  return hit && hit.kind === mode ? cleared : addRange(cleared, index, index, mode);
}

/** Shift+click: mark every token between `from` and `to` (either order) in `mode`. */
export function markRange(spans, from, to, mode) {
  const [lo, hi] = from <= to ? [from, to] : [to, from];
  return addRange(clearRange(spans, lo, hi), lo, hi, mode);
}

/** The question's text under a span of token chips [{start, end}] (character offsets). */
export function spanText(question, tokens, span) {
  return question.slice(tokens[span.start].start, tokens[span.end - 1].end);
}
