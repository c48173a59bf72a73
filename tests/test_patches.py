"""Per-patch sweeps (partial decoder, batched) equal the per-cell full-forward reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mllm_lens as ml
from mllm_lens.errors import CorruptionError, TraceConfigError, UnsupportedModelError
from mllm_lens.models.layouts import PatchLayout
from mllm_lens.results import PatchResult
from mllm_lens.tracing.corruption import ImageNoise
from mllm_lens.tracing.executor import Cell, RestorationExecutor
from mllm_lens.tracing.patches import patch_blocks, patch_sweep
from mllm_lens.tracing.reference import reference_clean_outputs, reference_patch_cell, reference_patch_sweep

RESTORE = [
    ("hidden", 1, "paper", 1),
    ("mlp", 1, "paper", 1),
    ("attn", 1, "paper", 2),
    ("hidden", 2, "paper", 2),
    ("mlp", 3, "rome", 1),
]
SCALE = 0.5


@pytest.mark.parametrize("site,window,mode,block", RESTORE)
def test_restore_sweep_equals_reference(models, arch, probe, site, window, mode, block):
    model = models[arch]
    encoded = probe.encode(model)
    # mild noise, so restored probabilities differ visibly; LLaVA-NeXT: noise on the base grid only
    # (its high-res tiles carry the image too, and stay corrupted under full image noise)
    base_grid = [(r, c) for r in range(2) for c in range(2)] if arch == "llava_next" else None
    noise = ImageNoise(base_grid, scale=SCALE)
    fast = patch_sweep(model, encoded, "restore", site, window, mode, block=block, batch_size=3, noise=noise)
    ref, clean_p, corrupted_p, target = reference_patch_sweep(
        model, encoded, "restore", site, window, mode, block, noise=noise
    )
    assert fast.target_id == target
    assert abs(fast.clean_prob - clean_p) <= 1e-5 and abs(fast.corrupted_prob - corrupted_p) <= 1e-5
    assert fast.scores.shape == ref.shape
    assert np.abs(fast.scores - ref).max() <= 1e-5
    assert np.ptp(ref) > 1e-3  # not vacuous


@pytest.mark.parametrize("block", [1, 2])
def test_corrupt_sweep_equals_reference(models, arch, probe, block):
    model = models[arch]
    encoded = probe.encode(model)
    noise = ImageNoise(scale=5.0, seed=2)
    fast = patch_sweep(model, encoded, "corrupt", block=block, noise=noise, batch_size=4)
    ref, clean_p, _none, target = reference_patch_sweep(model, encoded, "corrupt", block=block, noise=noise)
    assert fast.target_id == target and fast.corrupted_prob is None
    assert np.abs(fast.scores - ref).max() <= 1e-5
    assert np.allclose(fast.effect, clean_p - ref, atol=1e-5)


def test_batch_size_and_layers_subset(models, probe):
    model = models["llava"]
    one = patch_sweep(model, probe, batch_size=1)
    many = patch_sweep(model, probe, batch_size=32, layers=[1, 3])
    assert np.abs(one.scores[[1, 3]] - many.scores).max() <= 1e-6


@pytest.mark.parametrize("tokens_per_run", [1, 40, 90])
def test_run_sizes_that_vary_leave_no_stale_keys(models, probe, tokens_per_run):
    # A token budget gives runs of different row counts (more rows as the start moves right), so
    # buffer rows are reused after runs that wrote them from other starts: scores must not change.
    model = models["llava"]
    noise = ImageNoise(scale=SCALE)
    reference = patch_sweep(model, probe, batch_size=1, noise=noise)
    varied = patch_sweep(model, probe, batch_size=6, tokens_per_run=tokens_per_run, noise=noise)
    assert np.abs(varied.scores - reference.scores).max() <= 1e-6


def test_last_layer_mlp_runs_on_the_last_position_only(models, probe):
    model = models["llava"]
    seen = []
    last_mlp = model.adapter.site_module("mlp", model.num_layers - 1)
    handle = last_mlp.register_forward_hook(lambda _m, _args, out: seen.append(out.shape[1]))
    try:
        patch_sweep(model, probe, layers=[0])
    finally:
        handle.remove()
    assert seen and seen[-1] == 1  # the partial runs (after the two full base runs) trim it


def test_executor_restores_blocks(models, probe):
    """A multi-position Cell in the prefix-cached executor equals the reference block restore."""
    model = models["llava_phi"]
    encoded = probe.encode(model)
    clean = model.decoder_inputs(encoded.model_inputs)
    corrupted = ImageNoise().apply(model, encoded, clean)
    executor = RestorationExecutor(model, clean, corrupted, ["mlp"], batch_size=4)
    start = encoded.image_span[0]
    blocks = patch_blocks(encoded, block=2)
    cells = [
        Cell("mlp", (layer,), start + idx[0], tuple(start + i for i in idx)) for layer in range(2) for _, idx in blocks
    ]
    ref, *_rest, target = reference_patch_sweep(model, encoded, "restore", "mlp", block=2)
    probs = executor.run(cells, target, progress=False)
    assert np.abs(probs - ref[:2].reshape(-1)).max() <= 1e-5
    assert Cell("mlp", (0,), 5).positions == (5,)


def test_result_roundtrip_and_top(models, probe, tmp_path):
    result = patch_sweep(models["llava"], probe, block=2, stride=1)
    assert result.scores.shape == (5, 4, 4)  # stride 1: every origin; edge blocks clipped
    back = PatchResult.load(result.save(tmp_path / "p.npz"))
    assert np.array_equal(back.scores, result.scores) and back.patch_grid == (4, 4) and back.stride == 1
    assert len(result.top_patches(3)) == 3


def test_llava_next_sweeps_base_grid(models, probe):
    result = patch_sweep(models["llava_next"], probe, "corrupt")
    assert result.scores.shape == (2, 2)


def test_bad_inputs(models, probe):
    model = models["llava"]
    with pytest.raises(TraceConfigError):
        patch_sweep(model, probe, mode="erase")
    with pytest.raises(TraceConfigError):
        patch_sweep(model, probe, site="resid")
    with pytest.raises(TraceConfigError):
        patch_sweep(model, probe, block=9)
    with pytest.raises(CorruptionError):
        patch_sweep(model, probe, "corrupt", noise=ImageNoise(patches=[0]))
    with pytest.raises(CorruptionError):
        patch_sweep(model, probe, noise=ml.noise())
    encoded = probe.encode(model)
    encoded.patch_layout = PatchLayout(labels=["x"] * 16, rows=4, cols=4, grid_index=[-1] * 16)
    with pytest.raises(UnsupportedModelError):
        patch_sweep(model, encoded)


def test_partial_decoder_restart_is_exact(models, probe):
    from mllm_lens.tracing.partial import PartialDecoder

    model = models["llava"]
    embeds = model.decoder_inputs(probe.encode(model).model_inputs)
    decoder = PartialDecoder(model, embeds, max_batch=2)
    full = torch.softmax(model.decoder_logits(embeds)[0], -1)
    for layer, start in [(0, 3), (2, 10), (4, 0), (3, 20)]:
        hidden = decoder.inputs[layer][start:][None].expand(2, -1, -1)
        probs = torch.softmax(decoder.run(layer, start, hidden), -1)
        assert (probs - full).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_a_base_run_on_a_given_prefix_equals_the_whole_run(models, probe, family):
    """``prefix=``: the base run computes only ``[p, T)`` on the given keys/values, and records,
    logits and restarts equal those of the whole run (issue 13: a late phrase's partial plan reuses
    the shared prefix instead of recomputing it); a restart inside the prefix is refused."""
    from mllm_lens.tracing.partial import PartialDecoder

    model = models[family]

    def close(a: torch.Tensor, b: torch.Tensor) -> None:  # float32 rounding at the tensor's scale
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()

    call = model.decoder_call(probe.encode(model).model_inputs)
    whole = PartialDecoder(model, call.embeds, max_batch=2)
    p = call.embeds.shape[1] - 7
    prefix = [(k[:, :, :p], v[:, :, :p]) for k, v in whole.base_kv]
    part = PartialDecoder(model, call.embeds, max_batch=2, prefix=prefix)
    assert part.first == p and part.inputs[0].shape[0] == 7
    close(torch.softmax(part.logits, -1), torch.softmax(whole.logits, -1))
    for layer in range(model.num_layers):
        close(part.input_from(layer, p + 2), whole.input_from(layer, p + 2))
        close(part.output_from(layer, p), whole.output_from(layer, p))
        close(part.base_kv[layer][0], whole.base_kv[layer][0])
    bump = torch.zeros_like(whole.inputs[1][0])
    bump[0] = 3.0
    starts = [p + 1, p + 4]
    rows = torch.tensor([0, 1])
    positions = torch.tensor(starts)
    plan = {("mlp", 2): (rows, positions, torch.stack([bump, -bump]))}
    close(part.run_packed(1, starts, plan), whole.run_packed(1, starts, plan))  # rows of different starts
    start = p + 1
    hidden = part.input_from(1, start)[None].expand(2, -1, -1)
    rect = {("mlp", 2): (rows, positions - start, torch.stack([bump, -bump]))}
    close(part.run(1, start, hidden, rect), whole.run(1, start, hidden, rect))
    with pytest.raises(ValueError, match="prefix"):
        part.input_from(0, p - 1)
    with pytest.raises(ValueError, match="prefix"):
        part.run_packed(0, [p - 1])
    with pytest.raises(ValueError, match="leaves nothing"):  # a prefix as long as the run
        PartialDecoder(model, call.embeds, max_batch=2, prefix=whole.base_kv)


@pytest.fixture(scope="module")
def planted():
    from mllm_lens.testing.planted_patch import planted_patch_model

    return planted_patch_model(key=(2, 1))


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_planted_patch_is_found(planted, colour):
    from mllm_lens.tracing.attention import attention_contributions
    from mllm_lens.tracing.knockout import knockout_test

    assert planted.accuracy == 1.0
    probe = planted.probe(colour, seed=5)
    contributions = attention_contributions(planted.model, probe, target="visual")
    assert contributions.top_patches(1) == [planted.key]
    restore = patch_sweep(planted.model, probe, "restore")
    assert restore.clean_prob > 0.5 and restore.top_patches(1) == [planted.key]
    corrupt = patch_sweep(planted.model, probe, "corrupt")
    assert corrupt.top_patches(1) == [planted.key]
    report = knockout_test(planted.model, probe, k=1, repeats=10)
    assert report.top_patches == [planted.key]
    assert report.topk_drop > 0.05 and report.topk_drop > 20 * max(report.random_mean, 1e-4)


@pytest.mark.parametrize("site", ["hidden", "mlp"])
def test_region_curve_restores_the_region_jointly(models, probe, site):
    # The layer curve of a dragged box: every patch of the region restored in the same run.
    model = models["llava"]
    encoded = probe.encode(model)
    noise = ImageNoise(scale=SCALE)
    session = ml.TraceSession(model, encoded, noise, sites=(site,))
    start = encoded.image_span[0]
    region = [start + i for i in (0, 1, 4, 5)]  # the top-left 2x2 block of the 4x4 grid
    curve = session.region_curve(site, region)
    _clean, outputs = reference_clean_outputs(model, encoded, site)
    expected = [
        float(reference_patch_cell(model, encoded, noise, outputs, site, (layer,), region)[session.target])
        for layer in range(model.num_layers)
    ]
    np.testing.assert_allclose(curve, expected, atol=1e-5)
    singles = session.trace(site, positions=region, progress=False).scores[:, region]
    assert np.abs(curve - singles.mean(axis=1)).max() > 1e-3  # a region is not the mean of its patches
    np.testing.assert_allclose(session.region_curve(site, region[:1]), singles[:, 0], atol=1e-6)


def test_region_curve_rejects_positions_outside_the_prompt(models, probe):
    session = ml.TraceSession(models["llava"], probe, ImageNoise(scale=SCALE), sites=("hidden",))
    with pytest.raises(TraceConfigError, match="non-empty subset"):
        session.region_curve("hidden", [10_000])
    with pytest.raises(TraceConfigError, match="non-empty subset"):
        session.region_curve("hidden", [])


def test_a_last_layer_that_bypasses_the_cache_is_run_whole(models, probe, monkeypatch):
    # Simulate an attention that never stores keys/values through the cache: the key-only call
    # would then run the whole layer; the partial decoder must notice and fall back, exactly.
    from mllm_lens.tracing import partial

    model = models["llava"]
    noise = ImageNoise(scale=SCALE)
    split = patch_sweep(model, probe, noise=noise)
    original = partial._BufferLayer.update

    def update_ignoring_keys_only(self, key_states, value_states, *args, **kwargs):
        keys_only, self.keys_only = self.keys_only, False
        try:
            return original(self, key_states, value_states, *args, **kwargs)
        finally:
            self.keys_only = keys_only

    monkeypatch.setattr(partial._BufferLayer, "update", update_ignoring_keys_only)
    seen = []
    last_mlp = model.adapter.site_module("mlp", model.num_layers - 1)
    handle = last_mlp.register_forward_hook(lambda _m, _args, out: seen.append(out.shape[1]))
    try:
        whole = patch_sweep(model, probe, noise=noise)
    finally:
        handle.remove()
    assert min(seen) > 1  # no one-position call: the last layer ran whole
    assert np.abs(whole.scores - split.scores).max() <= 1e-6
