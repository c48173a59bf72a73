"""Waits for tests that drive a browser or a kernel, scaled for a loaded machine.

CI machines are shared and may run 3-4x slower than a quiet one, so a fixed deadline that is
generous on a laptop fails there. Every wait is multiplied by ``MLLM_LENS_E2E_PATIENCE``
(default 4 under CI, else 2).
"""

from __future__ import annotations

import os

PATIENCE = float(os.environ.get("MLLM_LENS_E2E_PATIENCE", "4" if os.environ.get("CI") else "2"))


def patient(milliseconds: float) -> int:
    """A wait of ``milliseconds`` on a quiet machine, scaled for a loaded one (milliseconds)."""
    return int(milliseconds * PATIENCE)
