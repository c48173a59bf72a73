"""Fine-tuning baselines for MultEdit, with the same interface and the same edited weight.

As in the paper's comparison (and ROME's FT / FT-L baselines, Meng et al. 2022): the
edited layer's output projection is trained directly on the edit prompts with Adam on the
new answer's first-token loss, −log p(new answer). *Constrained* fine-tuning (FT-L after Zhu
et al. 2020) clamps each weight to ‖W − W0‖∞ ≤ ε after every step. Training runs on float32
master copies of the weights (the model's own dtype may be float16/bfloat16); the result is
cast back when written.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mllm_lens.editing.requests import EncodedRequest, batch_inputs, length_groups
from mllm_lens.errors import EditError
from mllm_lens.models.lens_model import LensModel

#: Defaults measured on the demo model (benchmarks/RESULTS.md, "MultEdit").
FT_STEPS = 20
FT_LR = 5e-3
FT_EPSILON = 0.02  # about half the std of the demo model's down_proj weights


def finetune(
    model: LensModel,
    items: Sequence[EncodedRequest],
    modules: Sequence[nn.Linear],
    *,
    constrained: bool = False,
    steps: int = FT_STEPS,
    lr: float = FT_LR,
    epsilon: float = FT_EPSILON,
    weight_decay: float = 0.0,
) -> tuple[dict, dict]:
    """Train ``modules``' weights on the requests; write them in place. Returns (info, hyperparameters)."""
    if steps < 1 or lr <= 0:
        raise EditError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if constrained and epsilon <= 0:
        raise EditError(f"constrained fine-tuning needs epsilon > 0, got {epsilon}")
    originals = [m.weight.detach().float().clone() for m in modules]
    masters = [w.clone().requires_grad_(True) for w in originals]
    handles = []
    for module, master in zip(modules, masters, strict=True):

        def replace(mod, args, _out, master=master):
            x = args[0]
            return F.linear(x, master.to(x.dtype), None if mod.bias is None else mod.bias.to(x.dtype))

        handles.append(module.register_forward_hook(replace))
    optimizer = torch.optim.Adam(masters, lr=lr, weight_decay=weight_decay)
    groups = length_groups(items)
    losses = []
    try:
        for _ in range(steps):
            grads = [torch.zeros_like(m) for m in masters]
            total = 0.0
            for rows in groups:
                embeds, position_ids, pattern, deepstack = batch_inputs(items, rows)
                targets = torch.tensor([items[i].target_id for i in rows], device=embeds.device)
                logits = model.decoder_logits(embeds, positions=position_ids, pattern=pattern, deepstack=deepstack)
                loss = F.cross_entropy(logits, targets, reduction="sum") / len(items)
                for acc, grad in zip(grads, torch.autograd.grad(loss, masters), strict=True):
                    acc += grad
                total += float(loss.detach())
            losses.append(total)
            for master, grad in zip(masters, grads, strict=True):
                master.grad = grad
            optimizer.step()
            if constrained:
                with torch.no_grad():
                    for master, original in zip(masters, originals, strict=True):
                        master.copy_(torch.maximum(torch.minimum(master, original + epsilon), original - epsilon))
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for module, master in zip(modules, masters, strict=True):
            module.weight.copy_(master.to(module.weight.dtype))
    hyper = {"steps": steps, "lr": lr, "weight_decay": weight_decay}
    if constrained:
        hyper["epsilon"] = epsilon
    return {"loss_curve": losses}, hyper
