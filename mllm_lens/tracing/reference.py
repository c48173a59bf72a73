"""The test oracle: causal tracing done the plain way.

One full forward of the whole multimodal model (vision tower included) per cell, batch 1,
no KV cache, no batching, no skipped positions. The oracle shares no code with what it checks
beyond the model and the probe's encoding: it applies every corruption by its own code from
the documented rules (a replaced phrase as new ``input_ids``; noise of ``scale`` x sigma drawn
from ``torch.randn`` with a generator seeded by ``seed``, added to the decoder's
``inputs_embeds``, and for image noise on a DeepStack wrapper also to each ``deepstack_visual_embeds``
set the wrapper hands its decoder, at the noised image tokens, with that set's own sigma and the
next draws of the same generator), and it computes windows and the alignment of a replacement of
another length itself. The ``hidden`` state after layer ``l`` is what the next layer (after the last
layer: the final norm) reads, recorded and restored at that module's input, so whatever the decoder
stack adds between layers (Qwen3-VL's DeepStack features) is part of it. Slow on purpose and short
enough to check by eye; every fast path in :mod:`mllm_lens.tracing` must match it (float32, max abs
difference <= 1e-5).
"""

from __future__ import annotations

import numpy as np
import torch

from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe
from mllm_lens.tracing.corruption import ConstraintNoise, Corruption, ImageNoise, Replace


def _site_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def oracle_window(layer: int, window: int, mode: str, num_layers: int) -> list[int]:
    """The layers one cell restores, written out from the two conventions' definitions."""
    if mode == "paper":
        wanted = [layer] if window == 1 else list(range(layer - window, layer + window + 1))
    else:  # rome: w consecutive layers, the centre at index w // 2
        wanted = [layer - window // 2 + i for i in range(window)]
    return [i for i in wanted if 0 <= i < num_layers]


def _replaced(model: LensModel, encoded: EncodedProbe, corruption: Replace) -> tuple[dict, list[int | None]]:
    """The replaced prompt's model inputs (its own ``input_ids``, and for M-RoPE its own token types,
    from which the model computes its positions) and, for each clean position, the corrupted one
    it maps to."""
    constraint = encoded.probe.constraint(corruption.constraint)
    phrase, question = constraint.text, encoded.probe.question
    haystack, needle = (question, phrase) if phrase in question else (question.lower(), phrase.lower())
    at = -len(needle)
    for _ in range((constraint.occurrence or 0) + 1):  # the chosen (non-overlapping) occurrence
        at = haystack.find(needle, at + len(needle))
    new_question = question[:at] + corruption.by + question[at + len(phrase) :]
    new = Probe(encoded.probe.image, new_question, [], template=encoded.probe.template).encode(model)
    start, end = encoded.spans[phrase]
    shift = new.length - encoded.length
    mapping: list[int | None] = []
    for t in range(encoded.length):
        if t < start:
            mapping.append(t)
        elif t >= end:
            mapping.append(t + shift)
        else:  # inside the phrase: aligned from its last token; no counterpart past the replacement's start
            target = t + shift
            mapping.append(target if target >= start else None)
    return new.model_inputs, mapping


def _noise_positions_and_sigma(model: LensModel, encoded: EncodedProbe, corruption, embeds: torch.Tensor):
    if isinstance(corruption, ConstraintNoise):
        start, end = encoded.spans[encoded.probe.constraint(corruption.constraint).text]
        embed = model.adapter.embed_tokens  # the table's std times the scale the layer multiplies its output by
        sigma = embed.weight.detach().float().std().item() * float(getattr(embed, "embed_scale", 1.0))
        return list(range(start, end)), sigma
    start, end = encoded.image_span
    if corruption.patches is None:
        positions = list(range(start, end))
    else:
        positions = sorted(
            {
                start + (encoded.patch_layout.token_of_patch(*p) if isinstance(p, tuple) else int(p))
                for p in corruption.patches
            }
        )
    return positions, embeds[0, start:end].float().std().item()


def _site_hook(model: LensModel, site: str, layer: int, edit):
    """``(module, hook, pre)``: a hook that hands ``site``'s value ``[1, T, d]`` at ``layer`` to ``edit``
    and uses what it returns instead (None: unchanged). ``hidden``: the input of the next layer, or
    of the final norm after the last layer (a forward pre-hook); ``mlp``/``attn``: the module's output."""
    adapter = model.adapter
    if site != "hidden":

        def post(_module, _args, output):
            new = edit(_site_output(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return adapter.site_module(site, layer), post, False
    reader = adapter.layers[layer + 1] if layer + 1 < adapter.num_layers else adapter.final_norm()

    def pre(_module, args, kwargs):
        new = edit(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    return reader, pre, True


def _noise_deepstack(kwargs: dict, encoded: EncodedProbe, noise: ImageNoise, positions, gen) -> list:
    """Each ``deepstack_visual_embeds`` set noised at ``positions`` (its rows: the image positions in
    order), scale x the set's std over the image's tokens, with the generator's next draws."""
    order = kwargs["visual_pos_masks"][0].long().cumsum(0) - 1  # position -> row of the sets
    start, end = encoded.image_span
    noised = []
    for features in kwargs["deepstack_visual_embeds"]:
        sigma = features[order[start:end]].float().std().item()
        draw = torch.randn(len(positions), features.shape[-1], generator=gen)
        features = features.clone()
        features[order[positions]] += (noise.scale * sigma * draw).to(features.device, features.dtype)
        noised.append(features)
    return noised


def _full_forward(model: LensModel, encoded: EncodedProbe, corruption: Corruption | None, hooks) -> torch.Tensor:
    """Next-token probabilities ``[vocab]`` of one full forward with ``hooks`` (:func:`_site_hook`) installed."""
    inputs = dict(encoded.model_inputs)
    handles = [
        module.register_forward_pre_hook(fn, with_kwargs=True) if pre else module.register_forward_hook(fn)
        for module, fn, pre in hooks
    ]
    if isinstance(corruption, Replace):
        inputs = dict(_replaced(model, encoded, corruption)[0])
    elif corruption is not None:

        def add_noise(_module, args, kwargs):
            embeds = kwargs["inputs_embeds"].clone()
            positions, sigma = _noise_positions_and_sigma(model, encoded, corruption, embeds)
            gen = torch.Generator().manual_seed(corruption.seed)
            draw = torch.randn(len(positions), embeds.shape[-1], generator=gen)
            embeds[0, positions] += (corruption.scale * sigma * draw).to(embeds.device, embeds.dtype)
            kwargs["inputs_embeds"] = embeds
            if isinstance(corruption, ImageNoise) and kwargs.get("deepstack_visual_embeds"):
                kwargs["deepstack_visual_embeds"] = _noise_deepstack(kwargs, encoded, corruption, positions, gen)
            return args, kwargs

        handles.append(model.adapter.language_model.register_forward_pre_hook(add_noise, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model.hf_model(**inputs).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return torch.softmax(logits, dim=-1)


def reference_trace(
    model: LensModel,
    encoded: EncodedProbe,
    corruption: Corruption,
    site: str,
    window: int = 1,
    window_mode: str = "paper",
    target_id: int | None = None,
) -> tuple[np.ndarray, float, float, int]:
    """``(scores [layers, positions], clean_prob, corrupted_prob, target_id)``, cell by cell.

    A clean position with no counterpart in a replaced run scores NaN."""
    n_layers = model.adapter.num_layers
    clean, clean_outputs = reference_clean_outputs(model, encoded, site)
    target = int(clean.argmax()) if target_id is None else target_id
    corrupted = _full_forward(model, encoded, corruption, [])
    mapping = (
        _replaced(model, encoded, corruption)[1] if isinstance(corruption, Replace) else list(range(encoded.length))
    )

    scores = np.full((n_layers, encoded.length), np.nan)
    for layer in range(n_layers):
        layers = oracle_window(layer, window, window_mode, n_layers)
        for pos in range(encoded.length):
            if mapping[pos] is not None:
                probs = reference_cell(model, encoded, corruption, clean_outputs, site, layers, pos, mapping[pos])
                scores[layer, pos] = float(probs[target])
    return scores, float(clean[target]), float(corrupted[target]), target


def reference_cell(
    model: LensModel,
    encoded: EncodedProbe,
    corruption: Corruption,
    clean_outputs: dict,
    site: str,
    layers: list[int],
    position: int,
    into: int | None = None,
) -> torch.Tensor:
    """Probabilities ``[vocab]`` of one full forward: ``corruption`` on, the clean ``site``
    output at ``position`` (``clean_outputs[layer] [1, T, d]``) written at corrupted position
    ``into`` (default: the same) in each of ``layers``."""
    into = position if into is None else into
    hooks = []
    for restored in layers:

        def restore(tensor, restored=restored):
            tensor = tensor.clone()
            tensor[0, into] = clean_outputs[restored][0, position]
            return tensor

        hooks.append(_site_hook(model, site, restored, restore))
    return _full_forward(model, encoded, corruption, hooks)


def reference_clean_outputs(model: LensModel, encoded: EncodedProbe, site: str) -> tuple[torch.Tensor, dict]:
    """The clean run's next-token probabilities ``[vocab]`` and ``site`` outputs ``{layer: [1, T, d]}``."""
    outputs: dict[int, torch.Tensor] = {}

    def record(layer):
        def keep(tensor):
            outputs[layer] = tensor.detach().clone()

        return keep

    hooks = [_site_hook(model, site, i, record(i)) for i in range(model.adapter.num_layers)]
    return _full_forward(model, encoded, None, hooks), outputs


def reference_patch_cell(
    model: LensModel,
    encoded: EncodedProbe,
    noise: ImageNoise,
    clean_outputs: dict,
    site: str,
    layers: tuple[int, ...],
    positions: list[int],
) -> torch.Tensor:
    """Probabilities ``[vocab]`` of one full forward: ``noise`` on, clean ``site`` outputs at
    ``positions`` written back in each of ``layers``."""
    hooks = []
    for restored in layers:

        def restore(tensor, restored=restored):
            tensor = tensor.clone()
            tensor[0, positions] = clean_outputs[restored][0, positions]
            return tensor

        hooks.append(_site_hook(model, site, restored, restore))
    return _full_forward(model, encoded, noise, hooks)


def reference_patch_sweep(
    model: LensModel,
    encoded: EncodedProbe,
    mode: str = "restore",
    site: str = "hidden",
    window: int = 1,
    window_mode: str = "paper",
    block: int = 1,
    stride: int | None = None,
    noise: ImageNoise | None = None,
    target_id: int | None = None,
) -> tuple[np.ndarray, float, float | None, int]:
    """``(scores, clean_prob, corrupted_prob, target_id)`` of a per-patch sweep, cell by cell.

    Restore mode: ``scores [layers, rows', cols']`` with every visual token noised and the
    block's clean ``site`` outputs written back in the window; corrupt mode: ``scores [rows',
    cols']`` with only the block noised (``corrupted_prob`` is None).
    """
    from mllm_lens.tracing.patches import patch_blocks

    noise = ImageNoise() if noise is None else noise
    n_layers = model.adapter.num_layers
    cells = patch_blocks(encoded, block, stride)
    start = encoded.image_span[0]
    rows, cols = max(i for (i, _), _ in cells) + 1, max(j for (_, j), _ in cells) + 1
    clean, clean_outputs = reference_clean_outputs(model, encoded, site)
    target = int(clean.argmax()) if target_id is None else target_id
    if mode == "corrupt":
        scores = np.zeros((rows, cols))
        for cell, idx in cells:
            probs = _full_forward(model, encoded, ImageNoise(idx, noise.scale, noise.seed), [])
            scores[cell] = float(probs[target])
        return scores, float(clean[target]), None, target
    corrupted = _full_forward(model, encoded, noise, [])
    scores = np.zeros((n_layers, rows, cols))
    for layer in range(n_layers):
        layers = tuple(oracle_window(layer, window, window_mode, n_layers))
        for cell, idx in cells:
            probs = reference_patch_cell(model, encoded, noise, clean_outputs, site, layers, [start + i for i in idx])
            scores[layer, cell[0], cell[1]] = float(probs[target])
    return scores, float(clean[target]), float(corrupted[target]), target
