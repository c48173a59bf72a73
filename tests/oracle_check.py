"""Oracles shared by every architecture's tests: the fast tracer and patch sweeps against the
per-cell references, attention contributions against a computation by hand from an eager model."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from transformers import AutoModelForImageTextToText

import mllm_lens as ml
from mllm_lens.tracing.attention import attention_contributions, resolve_target
from mllm_lens.tracing.corruption import ImageNoise, as_corruption
from mllm_lens.tracing.patches import patch_sweep
from mllm_lens.tracing.reference import reference_patch_sweep, reference_trace

#: The three corruptions every family's oracle tests run: phrase noise, image noise, and a
#: replacement of another length (the tiny families' prompts all ask about "this country").
FAMILY_CORRUPTIONS = {
    "noise": ml.noise("this country"),
    "image": ml.image_noise(),
    "replace": ml.replace("this country", "the famous city"),
}


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


def eager_lens(saved_path: str, model: ml.LensModel) -> ml.LensModel:
    """The model saved at ``saved_path`` reloaded with eager attention (``output_attentions`` works)."""
    eager = AutoModelForImageTextToText.from_pretrained(saved_path, attn_implementation="eager").eval()
    return ml.LensModel.wrap(eager, model.processor)


def eager_contributions(lens: ml.LensModel, encoded, target: int):
    """Eq. 1 by hand: per-head and total norms from an eager model's ``output_attentions`` and v_proj outputs."""
    values = {}
    handles = [
        lens.adapter.value_proj(layer).register_forward_hook(
            lambda _m, _a, out, layer=layer: values.__setitem__(layer, out[0].detach())
        )
        for layer in range(lens.num_layers)
    ]
    with torch.no_grad():
        out = lens.hf_model(**encoded.model_inputs, output_attentions=True)
    for handle in handles:
        handle.remove()
    per_head, total = [], []
    for layer in range(lens.num_layers):
        attn = out.attentions[layer][0, :, target]  # [H, T]
        heads = attn.shape[0]
        w_o = lens.adapter.attn_out(layer).weight.detach()  # [d, H*hd]
        hd = w_o.shape[1] // heads
        v = values[layer].view(values[layer].shape[0], -1, hd)  # [T, kv, hd]
        group = heads // v.shape[1]
        vecs = torch.stack(
            [attn[h, :, None] * (v[:, h // group] @ w_o[:, h * hd : (h + 1) * hd].T) for h in range(heads)]
        )  # [H, T, d]
        per_head.append(vecs.norm(dim=-1).numpy())
        total.append(vecs.sum(0).norm(dim=-1).numpy())
    return np.stack(per_head), np.stack(total)


def assert_sweeps_equal_oracle(model: ml.LensModel, probe: ml.Probe, site: str, block: int, scale: float = 0.5) -> None:
    """A restore sweep (mild noise of ``scale`` on the base grid's tokens, paper window 1) and a corrupt sweep
    equal :func:`reference_patch_sweep` to 1e-5, and restorations move the probability. Tokens
    outside the grid (tiles, global views) are left clean: under noise they would stay corrupted
    whichever cell is restored."""
    encoded = probe.encode(model)
    layout = encoded.patch_layout
    noise = ImageNoise([(r, c) for r in range(layout.rows) for c in range(layout.cols)], scale=scale)
    fast = patch_sweep(model, encoded, "restore", site, 1, "paper", block=block, batch_size=3, noise=noise)
    ref, clean_p, corrupted_p, target = reference_patch_sweep(
        model, encoded, "restore", site, 1, "paper", block, noise=noise
    )
    assert fast.target_id == target and fast.scores.shape == ref.shape
    assert abs(fast.clean_prob - clean_p) <= 1e-5 and abs(fast.corrupted_prob - corrupted_p) <= 1e-5
    assert np.abs(fast.scores - ref).max() <= 1e-5
    assert np.ptp(ref) > 1e-3  # not vacuous
    noise = ImageNoise(scale=5.0, seed=2)
    fast = patch_sweep(model, encoded, "corrupt", block=block, noise=noise, batch_size=4)
    ref, clean_p, _none, target = reference_patch_sweep(model, encoded, "corrupt", block=block, noise=noise)
    assert fast.target_id == target and np.abs(fast.scores - ref).max() <= 1e-5
    assert np.allclose(fast.effect, clean_p - ref, atol=1e-5)


def assert_contributions_equal_eager(model: ml.LensModel, saved_path: str, probe: ml.Probe, target: str) -> None:
    """Attention contributions on the eager model equal :func:`eager_contributions` to 1e-5, and
    on the default (sdpa) model to float32 rounding grown through the layers."""
    eager = eager_lens(saved_path, model)
    encoded = probe.encode(model)
    t = resolve_target(encoded, target)
    per_head, total = eager_contributions(eager, encoded, t)
    on_eager = attention_contributions(eager, encoded, target=target)
    assert np.abs(on_eager.per_head - per_head).max() <= 1e-5
    assert np.abs(on_eager.total - total).max() <= 1e-5
    result = attention_contributions(model, encoded, target=target)
    assert np.abs(result.total - total).max() <= 1e-4 * max(1.0, np.abs(total).max())
    assert result.total.max() > 1e-2 and np.isfinite(result.visual).all()


def assert_edit_raises_and_undoes(model: ml.LensModel, probe: ml.Probe, factor: float, **hyperparameters) -> None:
    """``ml.edit`` at layer 1 (last-token key) changes the MLP output weight, raises p("Rome") in the
    full forward at least ``factor``-fold (a random tiny model holds no fact, so no edit reaches
    p = 0.5), and leaving the edit restores the weight and the probability bit for bit."""
    from mllm_lens.editing.multedit import EditIneffectiveWarning

    encoded = probe.encode(model)
    rome = model.tokenizer.convert_tokens_to_ids("Rome")

    def p_rome() -> float:
        with torch.no_grad():
            return float(model.hf_model(**encoded.model_inputs).logits[0, -1].softmax(-1)[rome])

    weight = model.adapter.mlp_out(1).weight
    before, p_before = weight.detach().clone(), p_rome()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EditIneffectiveWarning)
        with ml.edit(model, probe, "Rome", layer=1, key_token="last", **hyperparameters):
            assert not torch.equal(weight.detach(), before)
            assert p_rome() > factor * p_before
    assert torch.equal(weight.detach(), before) and p_rome() == p_before
