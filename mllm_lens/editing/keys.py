"""Keys and values of an edit: what the edited projection reads and what it should write.

MultEdit (Basu et al., NeurIPS 2024), like ROME (Meng et al., 2022), treats a linear output
projection as a key-value memory: the *key* is the projection's input at one token (here the
last token of the visual constraint), the *value* its output there. The new value is
v* = v0 + δ, with δ found by a few Adam steps on −log p(new answer's first token) while δ is
added to the projection's output at that token (paper: lr 0.1, 10 steps, weight decay 1e-3;
our defaults in :mod:`mllm_lens.editing.multedit`), and ‖δ‖ clamped to ``clamp``·‖v0‖ after
each step. Adam's step and the weight decay act in absolute units, so models whose activations
are much larger than LLaVA's need a larger lr and no decay (see the planted-model tests).

Everything runs on the decoder only (the clean run's ``inputs_embeds`` are computed once per
request), in batches of requests with equal prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mllm_lens.editing.requests import EncodedRequest, batch_inputs, length_groups
from mllm_lens.errors import EditError, UnsupportedModelError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel

EDIT_SITES = ("mlp", "attn")


def check_layers(model: LensModel, layers: int | Sequence[int]) -> list[int]:
    """Sorted, de-duplicated layers, each in range."""
    items = list(layers) if isinstance(layers, (list, tuple, range)) else [layers]
    if not items:
        raise EditError("no layer to edit")
    n = model.num_layers
    checked: set[int] = set()
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise EditError(f"layer {layer!r} is out of range: the model has {n} decoder layers (0..{n - 1})")
        checked.add(layer)
    return sorted(checked)


def projection(model: LensModel, layer: int, site: str) -> nn.Linear:
    """The edited weight's module: the MLP (``site="mlp"``) or attention output projection. A layer
    without one (a mixture-of-experts MLP, see :mod:`mllm_lens.models.moe`) is refused with the reason."""
    if site not in EDIT_SITES:
        raise EditError(f"cannot edit site {site!r}; expected one of {EDIT_SITES}")
    check_layers(model, layer)
    if site == "mlp":
        return model.adapter.mlp_out(layer)
    spec = model.adapter.spec
    module = getattr(model.adapter.attention(layer), spec.attn_out, None)
    if not isinstance(module, nn.Linear):
        raise UnsupportedModelError(
            f"decoder layer {layer} has no ATTN output projection '{spec.attention}.{spec.attn_out}' (an nn.Linear) "
            "to edit"
        )
    return module


def _stack(
    items: Sequence[EncodedRequest], rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, AttentionPattern | None, DeepStack | None]:
    """Decoder inputs, key positions, M-RoPE ids (None: 1-D), attention pattern (None: causal) and
    DeepStack additions (None: none) of one group of requests (see :func:`length_groups`)."""
    embeds, position_ids, pattern, deepstack = batch_inputs(items, rows)
    positions = torch.tensor([items[i].position for i in rows], device=embeds.device)
    return embeds, positions, position_ids, pattern, deepstack


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _capture_group(
    model: LensModel, module: nn.Linear, embeds, positions, position_ids, pattern, deepstack, hidden_layer: int | None
) -> dict:
    arange = torch.arange(len(positions), device=embeds.device)
    seen: dict[str, torch.Tensor] = {}

    def grab_key(_m, args):
        seen["key"] = args[0][arange, positions].float().cpu()

    def grab_value(_m, _args, out):
        seen["value"] = out[arange, positions].float().cpu()

    def grab_hidden(_m, _args, out):
        seen["hidden"] = _layer_output(out)[arange, positions].float().cpu()

    handles = [module.register_forward_pre_hook(grab_key), module.register_forward_hook(grab_value)]
    if hidden_layer is not None:
        handles.append(model.adapter.layers[hidden_layer].register_forward_hook(grab_hidden))
    try:
        model.decoder(embeds, positions=position_ids, pattern=pattern, deepstack=deepstack)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def capture(
    model: LensModel, items: Sequence[EncodedRequest], layer: int, site: str, hidden_layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys ``[n, d_in]``, outputs ``[n, d_out]`` of ``layer``'s projection at each request's key
    position, and (if asked) the residual stream after ``hidden_layer`` there; float32."""
    module = projection(model, layer, site)
    keys = torch.empty(len(items), module.in_features)
    values = torch.empty(len(items), module.out_features)
    hidden = torch.empty(len(items), model.adapter.hidden_size) if hidden_layer is not None else None
    for rows in length_groups(items):
        index = torch.tensor(rows)
        seen = _capture_group(model, module, *_stack(items, rows), hidden_layer)
        keys[index], values[index] = seen["key"], seen["value"]
        if hidden is not None:
            hidden[index] = seen["hidden"]
    return keys, values, hidden


def optimize_values(
    model: LensModel,
    items: Sequence[EncodedRequest],
    layer: int,
    site: str = "mlp",
    *,
    steps: int = 10,
    lr: float = 0.1,
    weight_decay: float = 1e-3,
    clamp: float | None = 4.0,
    stop_prob: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """δ ``[n, d_out]`` (float32) for each request at ``layer``'s projection output, with v0 and
    the new answer's probability reached with δ in place (each request optimised on its own).

    ``stop_prob``: keep, for each request, the first δ whose new-answer probability reaches it
    (ROME's early stop; the smallest δ that does the job disturbs other keys least)."""
    if steps < 1 or lr <= 0:
        raise EditError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if clamp is not None and clamp <= 0:
        raise EditError(f"clamp must be positive (a multiple of ‖v0‖) or None, got {clamp}")
    module = projection(model, layer, site)
    deltas = torch.zeros(len(items), module.out_features)
    v0s = torch.zeros(len(items), module.out_features)
    probs = torch.zeros(len(items))
    for rows in length_groups(items):
        index = torch.tensor(rows)
        targets = torch.tensor([items[i].target_id for i in rows], device=model.device)
        deltas[index], v0s[index], probs[index] = _optimize_group(
            model, module, *_stack(items, rows), targets, steps, lr, weight_decay, clamp, stop_prob
        )
    return deltas, v0s, probs


def _optimize_group(
    model,
    module,
    embeds,
    positions,
    position_ids,
    pattern,
    deepstack,
    targets,
    steps,
    lr,
    weight_decay,
    clamp,
    stop_prob,
):
    arange = torch.arange(len(positions), device=embeds.device)
    delta = torch.zeros(len(positions), module.out_features, device=embeds.device, requires_grad=True)
    state: dict[str, torch.Tensor] = {}
    kept = torch.zeros_like(delta, requires_grad=False)
    kept_p = torch.zeros(len(positions), device=embeds.device)
    done = torch.zeros(len(positions), dtype=torch.bool, device=embeds.device)

    def add_delta(_m, _args, out):
        if "v0" not in state:
            state["v0"] = out[arange, positions].detach().float()
        out = out.clone()
        out[arange, positions] = out[arange, positions] + delta.to(out.dtype)
        return out

    optimizer = torch.optim.Adam([delta], lr=lr, weight_decay=weight_decay)
    handle = module.register_forward_hook(add_delta)
    try:
        for step in range(steps + 1):
            logits = model.decoder_logits(embeds, positions=position_ids, pattern=pattern, deepstack=deepstack)
            logp = torch.log_softmax(logits, -1)[arange, targets]
            if stop_prob is not None:
                reached = (logp.detach().exp() >= stop_prob) & ~done
                kept[reached], kept_p[reached] = delta.detach()[reached], logp.detach().exp()[reached]
                done |= reached
                if bool(done.all()):
                    break
            if step == steps:  # the last forward only measures the final δ
                break
            (grad,) = torch.autograd.grad(-logp.sum(), [delta])
            delta.grad = grad
            optimizer.step()
            if clamp is not None:
                with torch.no_grad():
                    limit = clamp * state["v0"].norm(dim=-1, keepdim=True)
                    norm = delta.norm(dim=-1, keepdim=True)
                    delta.mul_(torch.where(norm > limit, limit / norm.clamp_min(1e-30), torch.ones_like(norm)))
    finally:
        handle.remove()
    final, probs = delta.detach(), logp.detach().exp()
    final, probs = torch.where(done[:, None], kept, final), torch.where(done, kept_p, probs)
    return final.float().cpu(), state["v0"].cpu(), probs.float().cpu()


@torch.no_grad()
def preservation_keys(model: LensModel, probes: Sequence, layer: int, site: str) -> torch.Tensor:
    """Keys ``[m, d_in]`` (float32) of ``layer``'s projection at every text position (not the
    image tokens) of ``probes``: inputs whose outputs an edit should leave alone."""
    module = projection(model, layer, site)
    found: list[torch.Tensor] = []
    for probe in probes:
        encoded = probe.encode(model)
        seen = _capture_all(model, module, *model.decoder_call(encoded.model_inputs))
        start, end = encoded.image_span
        keep = [i for i in range(encoded.length) if not start <= i < end]
        found.append(seen[keep])
    return torch.cat(found) if found else torch.empty(0, module.in_features)


def _capture_all(
    model: LensModel,
    module: nn.Linear,
    embeds: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    pattern: AttentionPattern | None = None,
    deepstack: DeepStack | None = None,
) -> torch.Tensor:
    """The projection's inputs ``[T, d_in]`` (float32) over one prompt's decoder inputs ``[1, T, d]``."""
    seen: dict[str, torch.Tensor] = {}

    def grab(_m, args):
        seen["key"] = args[0][0].float().cpu()

    handle = module.register_forward_pre_hook(grab)
    try:
        model.decoder(embeds, positions=position_ids, pattern=pattern, deepstack=deepstack)
    finally:
        handle.remove()
    return seen["key"]
