// Number formatting shared by the widgets (pure).

/** `v` with `digits` decimals ("–" for a missing or non-finite value; exponent from 1000 up). */
export function fmt(v, digits = 3) {
  if (v == null || !Number.isFinite(v)) return "–";
  return Math.abs(v) >= 1000 ? v.toExponential(2) : v.toFixed(digits);
}

/** A byte count for people: "300 bytes", "12 KB", "9.1 MB". */
export function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 2 ** 20) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 2 ** 20).toFixed(1).replace(/\.0$/, "")} MB`;
}
