"""The one batch-size estimate shared by the trace executor and the patch sweep."""

from __future__ import annotations

import pytest
import torch

import mllm_lens as ml
from mllm_lens.testing import tiny_llava
from mllm_lens.tracing import budget
from mllm_lens.tracing.executor import RestorationExecutor


@pytest.fixture(scope="module")
def model() -> ml.LensModel:
    return ml.LensModel.wrap(*tiny_llava(), name="tiny")


def test_row_bytes_counts_cache_activations_scores_and_logits(model):
    cfg = model.adapter.decoder_config
    d, layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    kv = cfg.num_key_value_heads * (d // heads)
    expected = (
        2 * layers * 30 * kv * 4  # KV cache over 30 keys, float32
        + 10 * (8 * d + 3 * cfg.intermediate_size) * 4  # one layer's activations for 10 queries
        + heads * 10 * 30 * 4  # attention scores
        + 2 * cfg.vocab_size * 4  # last-position logits and their softmax
    )
    assert budget.row_bytes(model, 10, 30) == expected


def test_batch_size_is_monotone_capped_and_at_least_one(model):
    sizes = [budget.batch_size(model, 50, 80, budget=b, max_batch=10**6) for b in (1, 10**5, 10**6, 10**7, 10**8)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] > sizes[1]
    by_length = [budget.batch_size(model, n, n, budget=10**7, max_batch=10**6) for n in (8, 64, 512, 4096)]
    assert by_length == sorted(by_length, reverse=True) and by_length[0] > by_length[-1] >= 1
    assert budget.batch_size(model, 4, 4, budget=1 << 40, max_batch=7) == 7
    assert budget.batch_size(model, 10**6, 10**6, budget=1, max_batch=7) == 1


def test_default_budget_on_cpu_is_the_cpu_budget():
    assert budget.default_memory_budget(torch.device("cpu")) == budget.CPU_BUDGET


def test_executor_and_patch_sweep_size_batches_with_it(model, probe):
    encoded = probe.encode(model)
    clean = model.decoder_inputs(encoded.model_inputs)
    corrupted = ml.image_noise().apply(model, encoded, clean)
    executor = RestorationExecutor(model, clean, corrupted, ["mlp"], memory_budget=10**6)
    suffix = encoded.length - executor.p0
    assert executor.batch_size == budget.batch_size(model, suffix, encoded.length, budget=10**6)
    sweep = ml.patch_sweep(model, encoded, layers=[0], memory_budget=10**6)
    assert sweep.settings["batch_size"] == budget.batch_size(
        model, encoded.length, encoded.length, budget=10**6, max_batch=32
    )
