"""The fast tracer (prefix cache + batching) equals the plain per-cell reference."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_check import assert_trace_equals_oracle

import mllm_lens as ml

CORRUPTIONS = {
    "noise": ml.noise("this country"),
    "textual_noise": ml.noise("continent", scale=5.0, seed=3),
    "image": ml.image_noise(),
    "patches": ml.image_noise(patches=[(0, 1), (1, 1)]),
    "replace": ml.replace("this country", "the city"),
    "replace_shorter": ml.replace("this country", "Paris"),
    "replace_longer": ml.replace("this country", "the famous city"),
}
SETTINGS = [
    ("hidden", 1, "paper"),
    ("mlp", 1, "paper"),
    ("attn", 1, "paper"),
    ("mlp", 2, "paper"),
    ("attn", 3, "rome"),
    ("hidden", 2, "rome"),
]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("site,window,mode", SETTINGS)
def test_fast_trace_equals_reference(models, arch, probe, corruption, site, window, mode):
    """Both restart plans (shared prefix; partial restart at the restored layer and position)."""
    model = models[arch]
    assert_trace_equals_oracle(model, probe, CORRUPTIONS[corruption], site, window, mode)


def test_batch_size_does_not_change_scores(models, probe):
    model = models["llava"]
    one = ml.trace(model, probe, ml.noise(), site="mlp", batch_size=1, progress=False)
    many = ml.trace(model, probe, ml.noise(), site="mlp", batch_size=64, progress=False)
    # float32 GEMMs round differently with the batch's row count (1.01e-6 here with one thread): the
    # oracle's 1e-5, not bit equality
    assert np.abs(one.scores - many.scores).max() <= 1e-5


def test_auto_plan_restarts_image_noise_partially_and_late_phrases_from_the_prefix(models, probe):
    """With batches smaller than a layer's cells, image noise restarts partially (later batches
    start later); one cell (a click) is not worth the partial plan's recorded base run."""
    model = models["llava"]
    image = ml.trace(model, probe, ml.image_noise(), site="mlp", progress=False, batch_size=4)
    assert image.settings["plan"] == "partial"
    session = ml.TraceSession(model, probe, ml.noise("this country"), ("mlp",))
    session.cell("mlp", 2, session.encoded.length - 1)  # one click: a recorded base run would cost more
    assert session.executor.last_plan == "prefix"
    forced = ml.trace(model, probe, ml.image_noise(), site="mlp", progress=False, plan="prefix", batch_size=4)
    assert np.nanmax(np.abs(forced.scores - image.scores)) <= 1e-5
