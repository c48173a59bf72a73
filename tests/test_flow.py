"""Constraint -> last-token flow as a correctness signal; the AUROC arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mllm_lens as ml
from mllm_lens.data import world
from mllm_lens.errors import TraceConfigError
from mllm_lens.testing import tiny_llava
from mllm_lens.tracing.attention import attention_contributions
from mllm_lens.tracing.flow import auroc, flow_auroc


def _brute_force(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        positive = rng.random(n) < 0.4
        positive[0], positive[1] = True, False
        assert abs(auroc(scores, positive) - _brute_force(scores, positive)) < 1e-12
    assert auroc([3, 2, 1], [True, False, False]) == 1.0
    assert auroc([1, 2, 3], [True, False, False]) == 0.0


def test_auroc_needs_both_classes():
    with pytest.raises(TraceConfigError, match="both classes"):
        auroc([0.1, 0.2], [True, True])


@pytest.fixture(scope="module")
def world_model() -> ml.LensModel:
    model, processor = tiny_llava(seed=1, extra_words=tuple(world.vocabulary()))
    return ml.LensModel.wrap(model, processor)


def test_flow_auroc_on_demo_world(world_model):
    records = world.generate(["France", "Japan"], seed=0)[::5][:6]
    tokenizer = world_model.tokenizer
    for i, record in enumerate(records):  # half of them answered as the model answers: both classes exist
        if i % 2 == 0:
            encoded = record.probe(with_answer=False).encode(world_model)
            with torch.no_grad():
                greedy = int(world_model.hf_model(**encoded.model_inputs).logits[0, -1].argmax())
            record.answer = tokenizer.convert_ids_to_tokens(greedy)
    report = flow_auroc(world_model, records)
    assert report.flows.shape == (6, world_model.num_layers)
    assert report.n_correct == 3 and report.n_wrong == 3
    assert report.layer_auroc.shape == (world_model.num_layers,)
    assert all(0 <= value <= 1 for value in report.layer_auroc)
    assert report.best_pair_auroc == max(
        auroc(report.flows[:, i] + report.flows[:, j], report.correct)
        for i in range(report.flows.shape[1])
        for j in range(i + 1, report.flows.shape[1])
    )
    assert "confidence" in report.table()
    # a record's flow is the head-summed contribution of its constraint tokens to the last token
    encoded = records[1].probe().encode(world_model)
    contributions = attention_contributions(world_model, encoded, target="last")
    a, b = encoded.spans[records[1].main_entity]
    assert np.allclose(report.flows[1], contributions.total[:, a:b].sum(1), rtol=1e-5)


def test_flow_auroc_refuses_single_class(world_model):
    records = world.generate(["France"], seed=0)[:2]
    for record in records:
        record.answer = "Paris"  # a random model does not say Paris first
    with pytest.raises(TraceConfigError, match="both classes"):
        flow_auroc(world_model, records, layers=[0, 1])
