"""The partial decoder: re-run only the part of a forward that an intervention can change.

A causal decoder computes position ``j`` at layer ``l`` from positions ``<= j`` at layer
``l - 1``. So an intervention that changes positions ``>= p`` from layer ``s`` on (restoring a
clean value at one image patch, or corrupting one patch's embedding) leaves

* every position ``< p`` unchanged at every layer -- their keys and values are those of the
  *base run* (the run without the intervention), recorded once per layer, and
* every layer below ``s`` unchanged -- the residual stream entering layer ``s`` is the base
  run's, recorded once per layer.

Where the wrapper masks its decoder itself (Gemma 3's bidirectional image block, a prefix-LM), a
query may read later keys, so the first point holds only from :meth:`PartialDecoder.restart` ``(p)``
(the image block's start for a position inside it; 0 in a prefix-LM's prefix): a caller starts its
run there, and every layer is masked with the captured pattern's own mask (sliding windows included).

A restoration run therefore starts at layer ``s`` from the base run's hidden states of
positions ``[p, T)`` (``[B, T - p, d]``, with the intervention written in), calls the decoder
layers ``s .. L-1`` directly (the adapter provides them, the rotary embedding and the final
norm) with a KV cache that holds the base run's keys/values of ``[0, p)`` and an explicit
mask of shape ``[1, 1, T - p, T]`` (query ``i`` is position ``p + i``; causal, or the layer's rows of
the captured pattern), and applies the final norm and LM head to the last position only. Each
layer's rotary cos/sin are the ones the decoder handed it in the base run (from its position ids,
``0..T-1`` or an M-RoPE decoder's 3-D ids, which the interventions leave unchanged; per layer, as
Gemma 3's local and global layers rotate with different bases), sliced to ``[p, T)``. For a
hidden-state restoration at layer ``l`` the run starts at ``s = l + 1``: layer ``l``'s output *is*
the restored value. Forward hooks on the site modules write further clean values (layer windows)
into the batch rows.

Where the wrapper adds visual features after its first layers (Qwen3-VL's DeepStack), a run replays
the additions of its layers at its positions ``[p, T)`` (:meth:`~mllm_lens.models.deepstack.DeepStack.
replayed`, before any other hook), so the recorded layer outputs and the restored hidden states are the
residual stream the next layer reads; a run may carry its own additions (per-row image noise).

The per-batch cache is one buffer ``[rows, kv_heads, T, head_dim]`` per layer (rows: the largest
run so far, grown by doubling up to ``max_batch``), filled with the base keys/values when it is
made; a run writes its rows' new keys/values into ``[p, T)`` and slots made stale by an earlier
run with a smaller ``p`` are copied back before use (per buffer row, so a short run does not pay
for the rows it does not use).

A base run may start after a prefix whose keys/values the caller already holds (``prefix``: the
restoration executor's shared prefix cache, ``[0, p0)``, where the corrupted run equals the clean
one): it then runs and records only ``[p0, T)`` (:attr:`PartialDecoder.first` is ``p0``; ``inputs``,
``outputs``, ``site_outputs`` and the rotary cos/sin cover ``[first, T)``) on a cache seeded with the
prefix, and every restart must lie at or after ``first``. For a text constraint late in a
LLaVA-shaped prompt this saves a whole-prompt forward per trace.

Rows restarting at different positions run packed end to end in one sequence (:meth:`PartialDecoder.
run_packed`, :mod:`mllm_lens.tracing.packed`), so each computes only its own positions; the batch
form (:meth:`PartialDecoder.run`: one start for every row) serves DeepStack decoders and patch sweeps.
A packed run goes one step further at its start layer ``s``: every position's keys and values there
come from the layer's input, which a restoration at ``s`` leaves unchanged, so the layer's output
changes only at the restored positions. It runs layer ``s`` on those tokens alone (each reading the
base run's keys and values) and the packed rows from ``s + 1``, on the base run's recorded outputs of
layer ``s`` with those tokens written in: for a window-1 restoration, the least any exact restoration
recomputes, plus one token.

The head reads only the last position, so the last layer computes only what that needs: the
keys/values of positions ``[p, T-1)`` (a layer call whose cache update stops it before the
attention, output projection and MLP) and then the whole layer at ``T-1`` alone. A layer that
does not store its keys/values through the cache is detected once and run whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.tracing.executor import PlanEntry, _site_tensor, _with_site_tensor
from mllm_lens.tracing.packed import PackedLayer, Packing, Tokens
from mllm_lens.tracing.prefix_cache import cache_of, layer_kv


class _KeysWritten(Exception):
    """Raised by a key-only layer call once its keys/values are in the cache."""


class _BufferLayer(DynamicLayer):
    """Keys/values ``[B, kv, T, hd]``: base values before ``start``, this run's from ``start``.

    With ``keys_only`` set, :meth:`update` stores the keys/values and raises :class:`_KeysWritten`,
    which ends the layer call before its attention, output projection and MLP."""

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int, start: int) -> None:
        super().__init__()
        self.keys, self.values, self.rows, self.start = keys, values, rows, start
        self.keys_only = False
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.start + key_states.shape[-2]
        self.keys[: self.rows, :, self.start : end] = key_states
        self.values[: self.rows, :, self.start : end] = value_states
        if self.keys_only:
            raise _KeysWritten
        return self.keys[: self.rows, :, :end], self.values[: self.rows, :, :end]

    def get_seq_length(self) -> int:
        return self.start


class PartialDecoder:
    """A base run of ``embeds [1, T, d]`` recorded once, restartable at any (layer, position).

    Records per layer: the residual stream entering (``inputs[l]``) and leaving
    (``outputs[l]``) the layer ``[T - first, d]`` (positions ``[first, T)``; ``first`` is 0 unless a
    ``prefix`` was given), its keys and values ``[0, T)``, and for each of ``sites`` the site module's
    output ``[T - first, d]`` (``site_outputs[(site, l)]``).
    """

    def __init__(
        self,
        model: LensModel,
        embeds: torch.Tensor,
        sites: Sequence[str] = (),
        *,
        max_batch: int = 32,
        positions: torch.Tensor | None = None,
        pattern: AttentionPattern | None = None,
        deepstack: DeepStack | None = None,
        prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """``positions``: an M-RoPE decoder's ids ``[3, 1, T]`` of ``embeds`` (None: 1-D ``0..T-1``);
        ``pattern``: the attention pattern of a decoder its wrapper masks (None: causal); ``deepstack``:
        the additions of a DeepStack decoder (None: none); ``prefix``: each layer's keys and values
        ``[1, kv, p, hd]`` of this very run's first ``p`` positions, so that only ``[p, T)`` is run."""
        self.model = model
        self.pattern = pattern
        self.deepstack = deepstack
        adapter = model.adapter
        self.num_layers = adapter.num_layers
        self.length = embeds.shape[1]
        self.first = 0 if prefix is None else int(prefix[0][0].shape[-2])
        if not 0 <= self.first < self.length:
            raise ValueError(f"a prefix of {self.first} positions leaves nothing of the {self.length}-token run")
        self.max_batch = max_batch
        self.inputs: list[torch.Tensor] = [torch.empty(0)] * self.num_layers
        self.outputs: list[torch.Tensor] = [torch.empty(0)] * self.num_layers
        self.site_outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.rope: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.num_layers  # cos/sin per layer
        with ExitStack() as stack, torch.no_grad():
            for layer in range(self.num_layers):
                module = adapter.layers[layer]
                stack.callback(module.register_forward_pre_hook(self._keep_input(layer), with_kwargs=True).remove)
                stack.callback(module.register_forward_hook(self._keep_output(layer)).remove)
                for site in sites:
                    hook = self._keep_site((site, layer))
                    stack.callback(adapter.site_module(site, layer).register_forward_hook(hook).remove)
            cache = model.new_cache() if prefix is None else cast(DynamicCache, _seeded_cache(prefix))
            suffix_positions = None if positions is None else positions[..., self.first :]
            self.logits = model.decoder_logits(embeds[:, self.first :], cache, suffix_positions, pattern, deepstack)[0]
        if any(rope is None for rope in self.rope):
            raise UnsupportedModelError(
                f"{adapter.backbone!r} decoder layers are not handed their rotary cos/sin as 'position_embeddings'; "
                "partial restarts cannot replay them"
            )
        self.base_kv = [layer_kv(layer) for layer in cache.layers]
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._keys_only: bool | None = None  # see _keys_only_calls_work
        self._dirty_from = [self.length] * max_batch  # per buffer row: first position a run overwrote

    def _keep_input(self, layer: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[layer] = hidden[0].detach().clone()
            self.rope[layer] = kwargs.get("position_embeddings")

        return hook

    def input_from(self, layer: int, position: int) -> torch.Tensor:
        """The residual stream entering ``layer`` at positions ``[position, T)``: ``[T - position, d]``."""
        return self.inputs[layer][self._recorded(position) :]

    def output_from(self, layer: int, position: int) -> torch.Tensor:
        """The residual stream leaving ``layer`` at positions ``[position, T)``: ``[T - position, d]``."""
        return self.outputs[layer][self._recorded(position) :]

    def _recorded(self, position: int) -> int:
        """Index of ``position`` in the records, refused before the first recorded position."""
        if position < self.first:
            raise ValueError(
                f"position {position} lies in the prefix [0, {self.first}) this base run did not record; "
                "a restart there needs a base run without a prefix"
            )
        return position - self.first

    def restart(self, position: int) -> int:
        """Where a run whose interventions start at ``position`` must start: ``position`` in a causal
        decoder, the pattern's :meth:`~mllm_lens.models.attention_pattern.AttentionPattern.restart` otherwise."""
        return position if self.pattern is None else self.pattern.restart(position)

    def masks(self, start: int) -> list[torch.Tensor]:
        """Each layer's additive mask ``[1, 1, T - start, T]`` for queries ``[start, T)``: causal, or
        the layer's rows of the pattern (layers of one kind share one tensor)."""
        dtype, device = self.inputs[0].dtype, self.inputs[0].device
        if self.pattern is not None:
            pattern = self.pattern
            made = {key: pattern.mask(key, start, self.length, dtype, device) for key in set(pattern.layer_keys)}
            return [made[key] for key in pattern.layer_keys]
        query = torch.arange(start, self.length, device=device)[:, None]
        keys = torch.arange(self.length, device=device)[None]
        mask = torch.zeros(self.length - start, self.length, dtype=dtype, device=device)
        return [mask.masked_fill_(keys > query, torch.finfo(dtype).min)[None, None]] * self.num_layers

    def _keep_output(self, layer: int):
        def hook(_module, _args, output):
            self.outputs[layer] = _site_tensor(output)[0].detach().clone()

        return hook

    def _keep_site(self, key: tuple[str, int]):
        def hook(_module, _args, output):
            self.site_outputs[key] = _site_tensor(output)[0].detach().clone()

        return hook

    def _cache(self, rows: int, start: int) -> Cache:
        if self._buffers is None or self._buffers[0][0].shape[0] < rows:
            # as many rows as runs use, grown by doubling: filling max_batch rows up front took a quarter
            # of a 607-token LLaVA-shaped MLP trace (1.3 GB copied for the 24 rows its runs used)
            held = 0 if self._buffers is None else self._buffers[0][0].shape[0]
            size = min(self.max_batch, max(rows, 2 * held))
            self._buffers = [
                (k.expand(size, -1, -1, -1).clone(), v.expand(size, -1, -1, -1).clone()) for k, v in self.base_kv
            ]
            self._dirty_from = [self.length] * self.max_batch
        # rows an earlier run wrote from dirty < start: copy the base keys back into [dirty, start)
        row = 0
        while row < rows:
            dirty, end = self._dirty_from[row], row + 1
            while end < rows and self._dirty_from[end] == dirty:
                end += 1
            if dirty < start:
                for (keys, values), (k0, v0) in zip(self._buffers, self.base_kv, strict=True):
                    keys[row:end, :, dirty:start] = k0[:, :, dirty:start]
                    values[row:end, :, dirty:start] = v0[:, :, dirty:start]
            row = end
        self._dirty_from[:rows] = [start] * rows
        return cache_of([_BufferLayer(k, v, rows, start) for k, v in self._buffers])

    def head(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, vocab]`` (float32) of last-position hidden states ``[B, d]``."""
        adapter = self.model.adapter
        with torch.no_grad():
            return adapter.lm_head(adapter.final_norm()(hidden_last)).float()

    def run(
        self,
        start_layer: int,
        start: int,
        hidden: torch.Tensor,
        plan: dict[tuple[str, int], PlanEntry] | None = None,
        deepstack: DeepStack | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, vocab]`` at the last position.

        ``hidden [B, T - start, d]`` enters layer ``start_layer`` (``== num_layers``: it is the
        final residual stream). ``plan[(site, layer)] = (rows, positions - start, values)``
        overwrites site outputs of layers ``>= start_layer``. ``deepstack`` replaces the base run's
        DeepStack additions (e.g. one noised set per row).
        """
        deepstack = self.deepstack if deepstack is None else deepstack
        rows, span = hidden.shape[0], hidden.shape[1]
        if span != self.length - start:
            raise ValueError(f"hidden covers {span} positions, expected {self.length - start} (from {start})")
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} rows exceeds max_batch={self.max_batch}")
        self._recorded(start)
        adapter = self.model.adapter
        plan = plan or {}
        last = self.num_layers - 1
        # see _last_layer; a last layer with a DeepStack addition runs whole (the addition's span is [start, T))
        split_last = start_layer <= last and span > 1 and (deepstack is None or deepstack.layers <= last)
        split_last = split_last and self._keys_only_calls_work()
        with ExitStack() as stack, torch.no_grad():
            stack.enter_context(self.model.replaying(deepstack, start))
            for key, entry in plan.items():
                if key[1] < start_layer:
                    raise ValueError(f"plan entry {key} lies below the start layer {start_layer}")
                if split_last and key[1] == last:
                    at_last = _at_last_position(entry, span)
                    if at_last is None:
                        continue
                    entry = at_last
                module = adapter.site_module(*key)
                stack.callback(module.register_forward_hook(_restorer(entry)).remove)
            if start_layer <= last:
                cache, masks = self._cache(rows, start), self.masks(start)
                for layer in range(start_layer, last if split_last else last + 1):
                    kwargs = self._layer_kwargs(layer, start, cache, masks[layer])
                    hidden = _site_tensor(adapter.layers[layer](hidden, **kwargs))
                if split_last:
                    kwargs = self._layer_kwargs(last, start, cache, masks[last])
                    hidden = self._last_layer(hidden, kwargs, cast(_BufferLayer, cache.layers[last]))
            return self.head(hidden[:, -1])

    def run_packed(
        self, start_layer: int, starts: Sequence[int], plan: dict[tuple[str, int], PlanEntry] | None = None
    ) -> torch.Tensor:
        """Logits ``[R, vocab]`` at the last position of rows ``r`` restarted at ``(start_layer, starts[r])``
        from the base run, packed into one sequence (:mod:`mllm_lens.tracing.packed`): each row computes
        only its own ``[starts[r], T)``. ``plan[(site, layer)] = (rows, positions, values)`` (absolute
        positions) overwrites site outputs of layers ``>= start_layer``. Not for DeepStack decoders.

        A restoration at the start layer changes that layer's output only at the positions it restores
        (every position's keys and values there come from the layer's unchanged input), so the start layer
        runs on those tokens alone, reading the base run's keys and values, and the packed rows start one
        layer up from the base run's recorded outputs with those tokens written in."""
        if self.deepstack is not None:
            raise ValueError("packed runs do not replay DeepStack additions; use run()")
        if not 0 <= start_layer < self.num_layers:
            raise ValueError(f"start layer {start_layer} outside the decoder's {self.num_layers} layers")
        if len(starts) > self.max_batch:
            raise ValueError(f"batch of {len(starts)} rows exceeds max_batch={self.max_batch}")
        plan = plan or {}
        adapter, last = self.model.adapter, self.num_layers - 1
        self._recorded(min(starts))
        packing = Packing.of(starts, self.length, self.inputs[0].device)
        changed = Tokens.of([(rows, positions) for key, (rows, positions, _) in plan.items() if key[1] == start_layer])
        changed.check_inside(packing)
        split_last = self._keys_only_calls_work()
        with ExitStack() as stack, torch.no_grad():
            for key, (rows, positions, values) in plan.items():
                if key[1] < start_layer:
                    raise ValueError(f"plan entry {key} lies below the start layer {start_layer}")
                entry: PlanEntry | None
                if key[1] == start_layer:  # the start layer's call on the changed tokens alone
                    entry = (torch.zeros_like(rows), changed.index(rows, positions), values)
                elif split_last and key[1] == last:  # the last layer's call on each row's last token alone
                    keep = positions == self.length - 1
                    entry = (torch.zeros_like(rows[keep]), rows[keep], values[keep]) if bool(keep.any()) else None
                else:
                    entry = (torch.zeros_like(rows), packing.index(rows, positions), values)
                if entry is not None:
                    stack.callback(adapter.site_module(*key).register_forward_hook(_restorer(entry)).remove)
            layers = [PackedLayer(k, v, _KeysWritten) for k, v in self.base_kv]
            cache = cache_of(layers)
            hidden = self.outputs[start_layer][packing.positions - self.first]
            if changed.tokens:
                restored = self._changed_layer_outputs(start_layer, changed, cache, layers[start_layer])
                hidden = hidden.index_put((packing.index(changed.rows, changed.positions),), restored)
            hidden = hidden[None]
            if start_layer == last:
                return self.head(hidden[0, packing.lasts])
            masks = self._packed_masks(packing)
            for layer in range(start_layer + 1, last if split_last else last + 1):
                kwargs = self._packed_kwargs(layer, packing.positions, cache, masks[layer])
                hidden = _site_tensor(adapter.layers[layer](hidden, **kwargs))
            if split_last:
                return self.head(self._packed_last_layer(hidden, packing, cache, masks[last], layers[last]))
            return self.head(hidden[0, packing.lasts])

    def _changed_layer_outputs(
        self, layer: int, changed: Tokens, cache: Cache, cache_layer: PackedLayer
    ) -> torch.Tensor:
        """Outputs ``[n, d]`` of ``layer`` at the ``changed`` tokens alone, each query reading the base
        run's keys and values of the positions its pattern allows (the site hooks write the restorations)."""
        positions = changed.positions
        dtype = self.inputs[0].dtype
        if self.pattern is None:
            keys = torch.arange(self.length, device=positions.device)
            allowed = keys[None] <= positions[:, None]
        else:
            allowed = self.pattern.allowed[self.pattern.layer_keys[layer]].to(positions.device)[positions]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        mask = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]
        cache_layer.frozen = True  # the base run's keys and values, as they are
        try:
            kwargs = self._packed_kwargs(layer, positions, cache, mask)
            hidden = self.inputs[layer][positions - self.first][None]
            return _site_tensor(self.model.adapter.layers[layer](hidden, **kwargs))[0]
        finally:
            cache_layer.frozen = False

    def _packed_last_layer(
        self, hidden: torch.Tensor, packing: Packing, cache: Cache, mask: torch.Tensor, cache_layer: PackedLayer
    ) -> torch.Tensor:
        """Last-position outputs ``[R, d]`` of the last layer on packed ``hidden [1, N, d]``: every packed
        token's keys/values (a call that stops once they are cached), then the whole layer at each row's
        last token alone, reading the stored keys/values."""
        layer, lasts = self.model.adapter.layers[-1], packing.lasts
        _write_keys(
            cache_layer,
            lambda: layer(hidden, **self._packed_kwargs(self.num_layers - 1, packing.positions, cache, mask)),
        )
        cache_layer.frozen = True
        kwargs = self._packed_kwargs(self.num_layers - 1, packing.positions[lasts], cache, mask[..., lasts, :])
        return _site_tensor(layer(hidden[:, lasts], **kwargs))[0]

    def _packed_masks(self, packing: Packing) -> list[torch.Tensor]:
        """Each layer's packed mask (:meth:`Packing.mask`; layers of one kind share one tensor)."""
        dtype = self.inputs[0].dtype
        if self.pattern is None:
            causal = torch.ones(self.length, self.length, dtype=torch.bool).tril_()
            return [packing.mask(causal, dtype)] * self.num_layers
        made = {key: packing.mask(self.pattern.allowed[key], dtype) for key in set(self.pattern.layer_keys)}
        return [made[key] for key in self.pattern.layer_keys]

    def _packed_kwargs(self, layer: int, positions: torch.Tensor, cache: Cache, mask: torch.Tensor) -> dict:
        """Keyword arguments of ``layer``'s call on packed tokens at ``positions [N]``."""
        cos, sin = cast(tuple[torch.Tensor, torch.Tensor], self.rope[layer])
        return dict(
            attention_mask=mask,
            position_ids=positions[None],
            cache=cache,
            use_cache=True,
            position_embeddings=(cos[:, positions - self.first], sin[:, positions - self.first]),
        )

    def _layer_kwargs(self, layer: int, start: int, cache: Cache, mask: torch.Tensor) -> dict:
        """Keyword arguments of ``layer``'s call on queries ``[start, T)``."""
        cos, sin = cast(tuple[torch.Tensor, torch.Tensor], self.rope[layer])
        return dict(
            attention_mask=mask,
            position_ids=torch.arange(start, self.length, device=cos.device)[None],
            cache=cache,
            use_cache=True,
            position_embeddings=(cos[:, start - self.first :], sin[:, start - self.first :]),
        )

    def _keys_only_calls_work(self) -> bool:
        """Whether the last layer stores its keys/values through the cache before attending (every
        transformers decoder layer does; one that does not gets the whole last layer instead).
        Checked once, on the base run's last two positions, against a copy of its cache."""
        if self._keys_only is None:
            last, start = self.num_layers - 1, max(self.first, self.length - 2)
            keys, values = (t[:, :, : self.length].clone() for t in self.base_kv[last])
            probe = _BufferLayer(keys, values, 1, start)
            probe.keys_only = True
            layers = [_BufferLayer(k, v, 1, start) for k, v in self.base_kv[:last]] + [probe]
            try:
                with torch.no_grad():
                    self.model.adapter.layers[last](
                        self.input_from(last, start)[None],
                        **self._layer_kwargs(last, start, cache_of(layers), self.masks(start)[last]),
                    )
            except _KeysWritten:
                self._keys_only = True
            else:
                self._keys_only = False
        return self._keys_only

    def _last_layer(self, hidden: torch.Tensor, kwargs: dict, cache_layer: _BufferLayer) -> torch.Tensor:
        """The last layer, computing only what the head reads: keys/values of positions
        ``[start, T-1)`` (a call that stops once they are cached), then the whole layer at ``T-1``."""
        layer = self.model.adapter.layers[-1]
        cos, sin = kwargs["position_embeddings"]
        mask, position_ids = kwargs["attention_mask"], kwargs["position_ids"]
        before_last = {
            **kwargs,
            "attention_mask": mask[..., :-1, :],
            "position_ids": position_ids[:, :-1],
            "position_embeddings": (cos[:, :-1], sin[:, :-1]),
        }
        _write_keys(cache_layer, lambda: layer(hidden[:, :-1], **before_last))
        cache_layer.start = self.length - 1
        last_kwargs = {
            **kwargs,
            "attention_mask": mask[..., -1:, :],
            "position_ids": position_ids[:, -1:],
            "position_embeddings": (cos[:, -1:], sin[:, -1:]),
        }
        return _site_tensor(layer(hidden[:, -1:], **last_kwargs))


def _seeded_cache(prefix: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    """A cache holding a copy of ``prefix``'s keys/values per layer, which a forward then extends."""
    layers = []
    for keys, values in prefix:
        layer = DynamicLayer()
        layer.update(keys, values)  # a copy: the cache cats onto an empty tensor
        layers.append(layer)
    return cache_of(layers)


def _write_keys(cache_layer: _BufferLayer | PackedLayer, call: Callable[[], object]) -> None:
    """Run ``call`` (the last decoder layer) with ``cache_layer`` in keys-only mode: it stores the
    keys/values and stops the layer there, as the last layer's other outputs feed nothing the head reads."""
    cache_layer.keys_only = True
    try:
        call()
    except _KeysWritten:
        pass
    else:
        raise RuntimeError("the last decoder layer did not write its keys/values through the cache")
    finally:
        cache_layer.keys_only = False


def _at_last_position(entry: PlanEntry, span: int) -> PlanEntry | None:
    """The part of a last-layer plan entry at the last position (index 0 of a one-position call);
    the last layer's other positions feed nothing the head reads."""
    rows, pos, values = entry
    keep = pos == span - 1
    if not bool(keep.any()):
        return None
    return rows[keep], torch.zeros_like(pos[keep]), values[keep]


def _restorer(entry: PlanEntry):
    rows, pos, values = entry

    def hook(_module, _args, output):
        tensor = _site_tensor(output)
        return _with_site_tensor(output, tensor.index_put((rows, pos), values.to(tensor.dtype)))

    return hook
