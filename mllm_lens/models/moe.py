"""Mixture-of-experts MLP blocks: traced as a whole, never edited.

In a mixture-of-experts layer (Qwen3-VL-MoE, Llama 4, ...) the module at the layer's MLP attribute
is a block: a router picks each token's top-k experts and sums their outputs (plus a shared
expert's, where there is one). Tracing needs only that block's output (the ``mlp`` site), which is
computed per token, so restoring it is as exact as restoring a dense MLP's. MultEdit needs one dense
output projection whose input is a key and whose weight is a key-value memory; a routed block has
none (its experts' weights are fused 3-D tensors, or one matrix per expert, each seeing only the
tokens routed to it), so edits of such a layer are refused with :func:`moe_refusal`'s reason.
"""

from __future__ import annotations

from torch import nn


def experts_of(mlp: nn.Module, name: str) -> nn.Module | None:
    """The experts module ``mlp.<name>`` of a mixture-of-experts block, None for a dense MLP."""
    experts = getattr(mlp, name, None)
    return experts if isinstance(experts, nn.Module) else None


def moe_refusal(mlp: nn.Module, layer: int, name: str) -> str | None:
    """Why MultEdit cannot edit ``layer``'s MLP ``mlp`` if it is a mixture-of-experts block, else None."""
    experts = experts_of(mlp, name)
    if experts is None:
        return None
    fused = [f"{name}.{n} {list(p.shape)}" for n, p in experts.named_parameters(recurse=False) if p.dim() == 3]
    weights = f"fused expert weights ({', '.join(fused)})" if fused else f"{len(list(experts.children()))} experts"
    return (
        f"mixture-of-experts MLP in layer {layer} ({type(mlp).__name__}): {weights}, no dense down projection "
        "(nn.Linear) for MultEdit to edit; the MLP site (the whole block's output) is traced"
    )
