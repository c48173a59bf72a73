"""One comparison of the fast tracer with the per-cell oracle, shared by every architecture's tests."""

from __future__ import annotations

import warnings

import numpy as np

import mllm_lens as ml
from mllm_lens.tracing.corruption import as_corruption
from mllm_lens.tracing.reference import reference_trace


def assert_trace_equals_oracle(model: ml.LensModel, probe: ml.Probe, corrupt, site: str, window: int, mode: str):
    """Both restart plans (shared prefix; partial restart at the restored layer and position) equal
    :func:`reference_trace` to 1e-5 on every cell, with the same target and clean/corrupted p."""
    ref, clean_p, corrupted_p, target = reference_trace(
        model, probe.encode(model), as_corruption(corrupt), site, window, mode
    )
    # the comparison is not vacuous: restorations move the probability
    assert np.nanmax(ref) - np.nanmin(ref) > 1e-3
    for plan in ("prefix", "partial"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
            fast = ml.trace(
                model,
                probe,
                corrupt,
                site=site,
                window=window,
                window_mode=mode,
                batch_size=7,
                progress=False,
                plan=plan,
            )
        assert fast.settings["plan"] == plan
        assert fast.target_id == target
        assert abs(fast.clean_prob - clean_p) <= 1e-5
        assert abs(fast.corrupted_prob - corrupted_p) <= 1e-5
        assert np.array_equal(np.isnan(fast.scores), np.isnan(ref))
        assert np.nanmax(np.abs(fast.scores - ref)) <= 1e-5, plan
