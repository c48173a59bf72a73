"""Layer windows: which layers one restoration covers.

Two conventions exist and both are supported, by name:

* ``"paper"`` (the released code of Basu et al.): ``window=1`` restores layer ``l`` only;
  ``window=w>1`` restores layers ``l-w ... l+w`` (``2w+1`` layers), clipped to the model.
* ``"rome"`` (Meng et al.): ``window=w`` restores ``w`` consecutive layers centred on ``l``,
  ``max(0, l - w//2) ... min(L, l - (-w//2)) - 1``.
"""

from __future__ import annotations

import numpy as np

from mllm_lens.errors import TraceConfigError

WINDOW_MODES = ("paper", "rome")


def window_layers(layer: int, window: int, mode: str, num_layers: int) -> tuple[int, ...]:
    """The layers restored for the cell at ``layer`` (sorted, within ``[0, num_layers)``)."""
    if mode not in WINDOW_MODES:
        raise TraceConfigError(f"window_mode must be one of {WINDOW_MODES}, got {mode!r}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise TraceConfigError(f"window must be >= 1 and an int (1 = one layer; see window_mode), got {window!r}")
    span = window if mode == "rome" else (1 if window == 1 else 2 * window + 1)
    if span > num_layers:
        raise TraceConfigError(
            f"window {window} ({mode} convention: {span} layers) is larger than the model's {num_layers} layers"
        )
    if not 0 <= layer < num_layers:
        raise TraceConfigError(f"layer {layer} outside the model's {num_layers} layers")
    if mode == "rome":
        lo, hi = max(0, layer - window // 2), min(num_layers, layer - (-window // 2))
    elif window == 1:
        lo, hi = layer, layer + 1
    else:
        lo, hi = max(0, layer - window), min(num_layers, layer + window + 1)
    return tuple(range(lo, hi))
