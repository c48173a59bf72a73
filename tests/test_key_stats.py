"""Key statistics for batch edits: the closed form, the second moment, and the disk cache."""

from __future__ import annotations

import numpy as np
import torch

import mllm_lens as ml
from mllm_lens.editing import key_stats
from mllm_lens.editing.keys import projection
from mllm_lens.models.fingerprint import weights_fingerprint


def test_covariance_update_solves_memits_least_squares():
    gen = torch.Generator().manual_seed(0)
    keys, residuals = torch.randn(5, 12, generator=gen), torch.randn(5, 7, generator=gen)
    samples = torch.randn(40, 12, generator=gen)
    moment = samples.T @ samples / 40
    delta = key_stats.covariance_update(keys, residuals, moment, weight=3.0)
    # plain reference: ΔW = R Kᵀ (w C + K Kᵀ)⁻¹ with K = keys.T, by an explicit float64 inverse
    k, r, c = keys.double().numpy().T, residuals.double().numpy().T, moment.double().numpy()
    expected = r @ k.T @ np.linalg.inv(3.0 * c + k @ k.T)
    np.testing.assert_allclose(delta.double().numpy(), expected, atol=1e-4)

    # it minimises w·E‖ΔW k_corpus‖² + Σ‖ΔW k_i − r_i‖²: any other ΔW does worse
    def cost(dw):
        return 3.0 * np.trace(dw @ c @ dw.T) + np.sum((dw @ k - r) ** 2)

    best = cost(delta.double().numpy())
    for _ in range(5):
        assert cost(delta.double().numpy() + 1e-2 * np.random.default_rng(1).normal(size=expected.shape)) > best


def test_second_moment_is_the_mean_outer_product_of_text_keys(models, probe):
    model = models["llava"]
    moment, count = key_stats.second_moment(model, 1, "mlp", [probe], progress=False)
    encoded = probe.encode(model)
    seen = {}
    handle = projection(model, 1, "mlp").register_forward_pre_hook(lambda _m, args: seen.update(k=args[0][0]))
    with torch.no_grad():
        model.hf_model(**encoded.model_inputs)
    handle.remove()
    start, end = encoded.image_span
    text = torch.cat([seen["k"][:start], seen["k"][end:]]).double()
    assert count == encoded.length - (end - start)
    torch.testing.assert_close(moment.double(), text.T @ text / count, atol=1e-5, rtol=1e-4)


def test_statistics_are_cached_and_invalidated_by_the_weights(models, probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MLLM_LENS_CACHE", str(tmp_path))
    model = models["llava"]
    first = key_stats.key_second_moment(model, 2, "mlp", [probe], progress=False)
    files = list((tmp_path / "key_stats").iterdir())
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(key_stats, "second_moment", lambda *a, **k: calls.append(1))
    assert torch.equal(key_stats.key_second_moment(model, 2, "mlp", [probe], progress=False), first)
    assert not calls  # read from disk
    weight = projection(model, 0, "mlp").weight
    with torch.no_grad():
        weight[0, 0] += 1.0
    try:
        assert weights_fingerprint(model) not in files[0].name
    finally:
        with torch.no_grad():
            weight[0, 0] -= 1.0
    assert files[0].name.startswith(weights_fingerprint(model))


def test_batch_edits_use_the_statistics_by_default(models, probe, monkeypatch):
    model = models["llava"]
    used = []
    original = key_stats.covariance_update

    def spy(*args, **kwargs):
        used.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ml.editing.multedit, "covariance_update", spy)
    requests = [ml.EditRequest(probe, word) for word in ("Paris", "Rome")]
    with ml.edit_many(model, requests, layers=1, stats_probes=[probe], warn=False) as handle:
        assert handle.hyperparameters["cov_weight"] > 0
    assert used
    used.clear()
    with ml.edit_many(model, requests[:1], layers=1, warn=False) as handle:
        assert handle.hyperparameters["cov_weight"] is None  # a single edit is the paper's rank-one
    assert not used
