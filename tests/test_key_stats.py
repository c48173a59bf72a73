"""Key statistics for batch edits: the closed form, the second moment, and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_shrinkage_moves_a_single_edit_from_whitened_to_the_papers_direction():
    gen = torch.Generator().manual_seed(2)
    key, residual = torch.randn(1, 12, generator=gen), torch.randn(1, 7, generator=gen)
    samples = torch.randn(30, 12, generator=gen) * torch.linspace(0.1, 3, 12)  # an anisotropic C
    moment = samples.T @ samples / 30
    k, r, c = key.double().numpy()[0], residual.double().numpy()[0], moment.double().numpy()
    scale = np.trace(c) / 12
    for rho in (0.0, 0.03, 0.5, 1.0):
        delta = key_stats.covariance_update(key, residual, moment, weight=0.5, shrinkage=rho).double().numpy()
        shrunk = (1 - rho) * c + rho * scale * np.eye(12)
        epsilon = 1e-6 * np.trace(0.5 * shrunk + np.outer(k, k)) / 12  # the solver's ridge, as ε/w on C_ρ
        direction = np.linalg.solve(shrunk + epsilon / 0.5 * np.eye(12), k)
        # Sherman–Morrison: ΔW = r (C_ρ⁻¹k)ᵀ / (w + kᵀC_ρ⁻¹k)
        np.testing.assert_allclose(delta, np.outer(r, direction) / (0.5 + k @ direction), rtol=1e-4, atol=1e-6)
    plain = key_stats.covariance_update(key, residual, moment, weight=0.5, shrinkage=1.0).numpy()
    cosine = np.abs(plain.ravel() @ np.outer(r, k).ravel()) / np.linalg.norm(plain) / np.linalg.norm(np.outer(r, k))
    assert cosine > 1 - 1e-6  # ρ = 1: along k, as the paper's rank-one update
    whitened = key_stats.covariance_update(key, residual, moment, weight=0.5, shrinkage=0.0).numpy()
    assert (
        np.abs(whitened.ravel() @ np.outer(r, k).ravel()) / np.linalg.norm(whitened) / np.linalg.norm(np.outer(r, k))
        < 0.99
    )  # ρ = 0: another direction
    torch.testing.assert_close(key_stats.shrunk(moment, 0.0), moment)


def test_edits_use_the_statistics_by_default(models, probe, monkeypatch):
    model = models["llava"]
    used = []
    original = key_stats.covariance_update

    def spy(*args, **kwargs):
        used.append(args[4] if len(args) > 4 else kwargs.get("shrinkage", 0.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(ml.editing.multedit, "covariance_update", spy)
    requests = [ml.EditRequest(probe, word) for word in ("Paris", "Rome")]
    with ml.edit_many(model, requests, layers=1, stats_probes=[probe], warn=False) as handle:
        assert handle.hyperparameters["cov_weight"] == ml.editing.multedit.DEFAULT_COV_WEIGHT
        assert handle.hyperparameters["shrinkage"] == 0.0
    assert used == [0.0]
    used.clear()
    with ml.edit_many(model, requests[:1], layers=1, stats_probes=[probe], warn=False) as handle:
        assert handle.hyperparameters["cov_weight"] == ml.editing.multedit.SINGLE_COV_WEIGHT
        assert handle.hyperparameters["shrinkage"] == ml.editing.multedit.SINGLE_SHRINKAGE > 0
    assert used == [ml.editing.multedit.SINGLE_SHRINKAGE]
    used.clear()
    with ml.edit_many(model, requests[:1], layers=1, cov_weight=None, warn=False) as handle:
        assert handle.hyperparameters["shrinkage"] is None  # the paper's rank-one update
    assert not used


def test_shrinkage_outside_zero_to_one_is_refused(models, probe):
    with pytest.raises(ml.EditError, match="shrinkage must be a number in \\[0, 1\\]"):
        ml.edit(models["llava"], probe, "Paris", layer=1, shrinkage=1.5)
