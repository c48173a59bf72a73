"""How many restoration rows one forward may carry: a single memory estimate for every batched tracer.

Both the trace executor (:mod:`mllm_lens.tracing.executor`, prefix and partial plans) and the
per-patch sweep (:mod:`mllm_lens.tracing.patches`) run batches whose rows each compute
``queries`` positions that attend over ``keys`` positions (``keys >= queries``: the shared
prefix or the base run's cached keys come first). One row's peak bytes, counted per row and
summed:

* **KV cache**: keys and values of every layer over all ``keys`` positions,
  ``2 x layers x keys x kv_heads x head_dim`` elements -- the executors hold one such buffer
  row per batch row for the whole trace, so this term is resident, not transient;
* **activations** of the layer being run, per query token: about ``8 d + 3 ffn`` elements
  (residual in and out, its norm, q, k, v, the attention output and its projection; the MLP's
  gate, up and activated product) -- one layer at a time, since nothing is kept for backward;
* **attention scores**: ``heads x queries x keys`` float32 (eager attention upcasts its
  softmax; fused kernels use less, so this is an upper bound);
* **logits**: only the last position goes through the LM head, float32, plus its softmax:
  ``2 x vocab x 4`` bytes.

The count is an estimate made to stay under the budget, not a measurement; the allocator's
slack is what the default budget's headroom is for.
"""

from __future__ import annotations

import torch

from mllm_lens.models.lens_model import LensModel

#: The budget on a CPU (bytes): what a laptop can spare for one batch. The demo model's batches
#: stay far below it (their row caps bind first), which keeps a 2 GB Binder kernel safe.
CPU_BUDGET = 2 << 30


def default_memory_budget(device: torch.device) -> int:
    """Bytes one batch may use: half the free GPU memory (the rest is headroom for the
    allocator and the recorded runs), else :data:`CPU_BUDGET`."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return CPU_BUDGET


def row_bytes(model: LensModel, queries: int, keys: int) -> int:
    """Estimated peak bytes of one batch row computing ``queries`` positions over ``keys``
    positions (see the module docstring for what is counted)."""
    adapter, cfg = model.adapter, model.adapter.decoder_config
    item = torch.finfo(model.dtype).bits // 8
    d = adapter.hidden_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    ffn = getattr(cfg, "intermediate_size", None) or 4 * d
    vocab = getattr(cfg, "vocab_size", None) or adapter.embed_tokens.num_embeddings
    cache = 2 * adapter.num_layers * keys * kv_heads * head_dim * item
    activations = queries * (8 * d + 3 * ffn) * item
    scores = heads * queries * keys * 4
    logits = 2 * vocab * 4
    return cache + activations + scores + logits


def batch_size(model: LensModel, queries: int, keys: int, *, budget: int | None = None, max_batch: int = 64) -> int:
    """Rows per forward: as many as :func:`row_bytes` fits in ``budget`` (default
    :func:`default_memory_budget`), at least 1 and at most ``max_batch``."""
    budget = budget or default_memory_budget(model.device)
    return int(max(1, min(max_batch, budget // max(row_bytes(model, queries, keys), 1))))
