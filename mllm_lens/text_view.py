"""A trace as text: a layer x position heatmap for terminals and logs."""

from __future__ import annotations

import numpy as np

from mllm_lens.results import TraceResult

_SHADES = " .:-=+*#%@"


def heatmap_text(result: TraceResult, *, image_band: bool = True, label_width: int = 12) -> str:
    """Rows are positions (the image collapsed into one band, its max), columns are layers;
    each cell is shaded by the normalised indirect effect (blank = none, ``@`` = fully restored)."""
    effect = np.nan_to_num(np.clip(result.normalized_effect, 0.0, 1.0))
    start, end = result.image_span
    marked = {p for span in result.constraint_spans.values() for p in range(*span)}
    rows: list[tuple[str, bool, np.ndarray]] = []
    for pos, label in enumerate(result.labels):
        if image_band and start <= pos < end:
            if pos == start:
                rows.append((f"<image x{end - start}>", False, effect[:, start:end].max(axis=1)))
            continue
        rows.append((label, pos in marked, effect[:, pos]))
    layers = "".join(str(layer % 10) for layer in range(result.num_layers))
    lines = [result.summary(), " " * (label_width + 2) + layers + "  layer"]
    for label, is_constraint, values in rows:
        shade = "".join(_SHADES[min(int(v * (len(_SHADES) - 1) + 0.5), len(_SHADES) - 1)] for v in values)
        lines.append(f"{label[:label_width]:>{label_width}}{'*' if is_constraint else ' '} {shade}")
    lines.append("* = constraint token; shade = normalised indirect effect (blank 0 ... @ 1)")
    return "\n".join(lines)
