"""Notebook widgets (anywidget): the trace heatmap, the image patch overlay, and the Explorer.

Import this package only where widgets are used: it needs the ``widgets`` extra
(``pip install 'mllm-lens[widgets]'``) and the built front end in ``mllm_lens/static/``
(``npm ci && npm run build`` in ``js/``, done by ``pip install .`` when npm is present).
The engine never imports it.
"""

from __future__ import annotations

from mllm_lens.widgets._base import MAX_MESSAGE_BYTES, MAX_PENDING, MessageError
from mllm_lens.widgets._explorer import Explorer
from mllm_lens.widgets._heatmap import TraceHeatmap
from mllm_lens.widgets._live import LiveAggregate
from mllm_lens.widgets._overlay import PatchOverlay, patch_curve
from mllm_lens.widgets._panel import MAX_UPLOAD_BYTES

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING",
    "MAX_UPLOAD_BYTES",
    "Explorer",
    "LiveAggregate",
    "MessageError",
    "PatchOverlay",
    "TraceHeatmap",
    "patch_curve",
]
