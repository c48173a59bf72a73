"""A fact planted in layer k's MLP is found in layer k."""

from __future__ import annotations

import numpy as np
import pytest

import mllm_lens as ml
from mllm_lens.testing.planted import planted_fact_model


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_mlp_trace_peaks_at_the_planted_layer(layer):
    planted = planted_fact_model(layer)
    assert planted.final_loss < 0.05
    checked = 0
    for entity in planted.facts:
        probe = planted.probe(entity)
        result = ml.trace(planted.model, probe, ml.noise(entity), site="mlp", progress=False)
        assert result.clean_prob > 0.9
        if result.corrupted_prob > 0.5 * result.clean_prob:
            continue  # this noise draw did not remove the fact; nothing to locate
        start, _ = result.constraint_spans[entity]
        assert int(np.argmax(result.scores[:, start])) == layer, (entity, result.scores[:, start])
        assert result.normalized_effect[layer, start] > 0.9
        checked += 1
    assert checked >= 6
