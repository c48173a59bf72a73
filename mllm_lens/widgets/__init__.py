"""Notebook widgets (anywidget): the trace heatmap and the image patch overlay.

Import this package only where widgets are used: it needs the ``widgets`` extra
(``pip install 'mllm-lens[widgets]'``) and the built front end in ``mllm_lens/static/``
(``npm ci && npm run build`` in ``js/``, done by ``pip install .`` when npm is present).
The engine never imports it.
"""

from __future__ import annotations

from mllm_lens.widgets._base import MAX_MESSAGE_BYTES, MAX_PENDING, MessageError
from mllm_lens.widgets._heatmap import TraceHeatmap
from mllm_lens.widgets._overlay import PatchOverlay, patch_curve

__all__ = ["MAX_MESSAGE_BYTES", "MAX_PENDING", "MessageError", "PatchOverlay", "TraceHeatmap", "patch_curve"]
