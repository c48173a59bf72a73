"""The batched restoration executor: many (layer window, position) cells per forward pass.

Every position before ``p0``, the first position where the corrupted decoder inputs differ
from the clean ones, is identical in both runs. So

1. the prefix ``[0, p0)`` is run once and its KV cache is shared by every restoration run
   (:mod:`mllm_lens.tracing.prefix_cache`); each run computes only the suffix ``[p0, T)``
   (in LLaVA the 576 image tokens come first, so for a text constraint most work disappears);
2. many cells share one forward: batch row ``i`` carries cell ``i``'s restore mask, applied
   by forward hooks that write clean activations with one ``index_put`` per (site, layer);
3. the batch size comes from a memory budget (:mod:`mllm_lens.tracing.budget`), so a 7B
   model does not run out of memory.

A replacement of another token count gives a corrupted run of another length; then
``position_map`` says onto which corrupted position each clean position is restored.

An M-RoPE decoder (Qwen2-VL) takes 3-D position ids computed from the image grid; ``positions``
holds the clean and the corrupted run's (they differ only after a replaced phrase of another
length), and every decoder call gets the slice its embeddings cover: the prefix ``[0, p0)``
(equal in both runs), the clean suffix, the corrupted suffix and the partial plan's base run.

A wrapper that masks its decoder itself (Gemma 3: an image's tokens read each other both ways,
sliding-window layers) gives ``patterns`` (clean, corrupted): every decoder call is masked with them,
and the shared prefix ends where no earlier query reads a later key
(:meth:`~mllm_lens.models.attention_pattern.AttentionPattern.restart`): a corruption or restoration
inside an image block changes the block's earlier positions too, so the recomputed suffix starts at
the block's start; positions before it are still the shared clean/corrupted prefix. ``p0`` is that
start, ``first_changed`` the first position whose inputs differ.

A wrapper that adds visual features after its first layers (Qwen3-VL's DeepStack) gives
``deepstacks`` (clean, corrupted; image noise noises the corrupted run's): every decoder call replays
the additions at the positions it covers, registered before every other hook on a layer, so a
recorded or restored ``hidden`` state is the residual stream the next layer reads
(:mod:`mllm_lens.models.deepstack`). ``first_changed`` counts a position whose addition differs as
changed, like one whose input does.

When the corruption starts early (image noise corrupts from the first image token), the shared
prefix saves little. The *partial* plan then restarts each batch of cells where it can first differ
from the corrupted run: at the lowest restored layer and the first restored position, from the
corrupted run's recorded hidden states, keys and values
(:class:`~mllm_lens.tracing.partial.PartialDecoder`), a recording that runs only ``[p0, T)`` on the
shared prefix's keys/values (the corrupted run equals the clean one before ``p0``). Layer-major cell
order makes the batches of one layer share their start layer; each cell's row recomputes only the
positions from its own restart, the batch's rows packed into one sequence
(:mod:`mllm_lens.tracing.packed`; a DeepStack decoder's rows all start at the batch's first position
instead). A packed batch runs its start layer on the restored tokens alone, since a restoration there
changes that layer's output at no other position, and its rows from one layer up
(:meth:`~mllm_lens.tracing.partial.PartialDecoder.run_packed`). ``plan="auto"`` picks the plan with
the fewer estimated position-layer computations for the cells at hand;
:attr:`RestorationExecutor.last_plan` says which ran. When more than half the prompt changes
(``2·p0 < T``) and the plan is not forced to "prefix", the corrupted run itself is made as the
recorded base run, so a partial-plan trace pays for that forward once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.tracing import budget
from mllm_lens.tracing.prefix_cache import SharedPrefixCache

if TYPE_CHECKING:
    from mllm_lens.tracing.partial import PartialDecoder  # partial imports this module

PlanEntry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, suffix positions, values
PLANS = ("auto", "prefix", "partial")
#: The partial plan must promise at most this share of the prefix plan's work to be picked
#: (its per-batch bookkeeping and its one recorded base run are not free).
PARTIAL_ADVANTAGE = 0.7
#: A packed partial batch holds at most this many prompt lengths of tokens: its attention reads
#: ``T + N`` keys per token and its mask is ``N x (T + N)``, so ``N`` stays of the order of ``T``.
PACK_TOKENS = 2


@dataclass(frozen=True)
class Cell:
    """One restoration: the clean ``site`` output at ``position`` in every layer of ``layers``.

    ``positions`` restores several positions at once (a k x k block of image patches); it
    defaults to ``(position,)``, and ``position`` is then its first element by convention.
    """

    site: str
    layers: tuple[int, ...]
    position: int
    positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.positions:
            object.__setattr__(self, "positions", (int(self.position),))
        else:
            object.__setattr__(self, "positions", tuple(sorted({int(p) for p in self.positions})))


def _site_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_site_tensor(output, tensor: torch.Tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register forward hooks and always remove them (exceptions, Ctrl-C included)."""
    with ExitStack() as stack:
        for module, fn in hooks:
            stack.callback(module.register_forward_hook(fn).remove)
        yield


def _cut(positions: torch.Tensor | None, start: int, stop: int | None) -> torch.Tensor | None:
    """Position ids ``[3, 1, T]`` of ``[start, stop)`` (None stays None: a 1-D decoder)."""
    return None if positions is None else positions[..., start:stop]


def _check_positions(
    clean: torch.Tensor | None, corrupted: torch.Tensor | None, length: int, corrupted_length: int, p0: int
) -> None:
    """Both runs' M-RoPE ids are given or neither, cover their runs and agree on the shared prefix."""
    if clean is None and corrupted is None:
        return
    if clean is None or corrupted is None:
        raise ValueError("pass the M-RoPE positions of both the clean and the corrupted run")
    if clean.shape[-1] != length or corrupted.shape[-1] != corrupted_length:
        raise ValueError(
            f"positions cover {clean.shape[-1]} and {corrupted.shape[-1]} tokens, "
            f"the runs {length} and {corrupted_length}"
        )
    if not torch.equal(clean[..., :p0], corrupted[..., :p0]):
        raise ValueError("the clean and corrupted runs' positions differ before their first changed input")


class RestorationExecutor:
    """Clean activations, the shared prefix cache and the corrupted suffix of one trace."""

    def __init__(
        self,
        model: LensModel,
        clean: torch.Tensor,
        corrupted: torch.Tensor,
        sites: Sequence[str],
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        max_batch: int = 64,
        position_map: Sequence[int | None] | None = None,
        plan: str = "auto",
        positions: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        patterns: tuple[AttentionPattern | None, AttentionPattern | None] = (None, None),
        deepstacks: tuple[DeepStack | None, DeepStack | None] = (None, None),
    ) -> None:
        if plan not in PLANS:
            raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
        self.model = model
        self.plan = plan
        self.last_plan: str | None = None
        self.corrupted = corrupted
        self._partial: PartialDecoder | None = None
        self.length = clean.shape[1]
        self.clean_deepstack, self.corrupted_deepstack = deepstacks
        shared = min(self.length, corrupted.shape[1])
        changed = (clean[:, :shared] != corrupted[:, :shared]).any(dim=-1)[0].nonzero().flatten()
        added = (
            None if self.clean_deepstack is None else self.clean_deepstack.first_difference(self.corrupted_deepstack)
        )
        if changed.numel() == 0 and corrupted.shape[1] == self.length and added is None:
            raise ValueError("the corrupted inputs equal the clean inputs")
        self.first_changed = min(int(changed[0]) if changed.numel() else shared, shared if added is None else added)
        self.clean_pattern, self.corrupted_pattern = patterns
        self.p0 = self._shared_prefix(self.first_changed)
        if position_map is None and corrupted.shape[1] != self.length:
            raise ValueError("clean and corrupted inputs differ in length: pass position_map")
        self.position_map = list(range(self.length)) if position_map is None else list(position_map)
        if len(self.position_map) != self.length:
            raise ValueError(f"position_map has {len(self.position_map)} entries for {self.length} clean positions")
        self.sites = tuple(sites)
        self.clean_positions, self.corrupted_positions = positions
        _check_positions(self.clean_positions, self.corrupted_positions, self.length, corrupted.shape[1], self.p0)
        longest = max(self.length, corrupted.shape[1])
        # a row computes at most the suffix [p0, T) (the partial plan starts at or after p0)
        self.batch_size = batch_size or budget.batch_size(
            model, longest - self.p0, longest, budget=memory_budget, max_batch=max_batch
        )
        with torch.no_grad():
            prefix = (
                model.prefix_cache(
                    clean[:, : self.p0],
                    _cut(self.clean_positions, 0, self.p0),
                    self.clean_pattern,
                    self.clean_deepstack,
                )
                if self.p0
                else None
            )
            self.shared = None if prefix is None else SharedPrefixCache(prefix, self.batch_size, longest - self.p0)
            self.clean_suffix = clean[:, self.p0 :]
            self.corrupted_suffix = corrupted[:, self.p0 :]
            self.clean_logits, self.activations = self._record_clean()
            if plan != "prefix" and 2 * self.p0 < corrupted.shape[1]:
                # most of the prompt changes (image noise): the corrupted run is most of a partial-plan
                # base run, so make it that run, recorded once, rather than run it twice
                self.corrupted_logits = self._partial_decoder().logits[None]
            else:
                self.corrupted_logits = self._suffix_logits(
                    self.corrupted_suffix, self.corrupted_positions, self.corrupted_pattern, self.corrupted_deepstack
                )

    def _shared_prefix(self, first_changed: int) -> int:
        """The longest prefix ``[0, s)``, ``s <= first_changed``, that no later position reaches in
        either run (``first_changed`` itself in a causal decoder)."""
        start = first_changed
        while True:
            moved = start
            for pattern in (self.clean_pattern, self.corrupted_pattern):
                moved = moved if pattern is None else pattern.restart(moved)
            if moved == start:
                return start
            start = moved

    def restorable(self, position: int) -> bool:
        """Whether restoring clean ``position`` changes the corrupted run: it lies after the
        shared prefix and has a counterpart in the corrupted run."""
        return position >= self.p0 and self.position_map[position] is not None

    def _cache(self, batch: int):
        return None if self.shared is None else self.shared.for_batch(batch)

    def _suffix_logits(
        self,
        suffix: torch.Tensor,
        positions: torch.Tensor | None,
        pattern: AttentionPattern | None,
        deepstack: DeepStack | None,
    ) -> torch.Tensor:
        """Logits of suffix rows ``[B, S, d]`` on the shared prefix; ``positions``, ``pattern``, ``deepstack``:
        the whole run's."""
        cache = self._cache(suffix.shape[0])
        return self.model.decoder_logits(suffix, cache, _cut(positions, self.p0, None), pattern, deepstack)

    def _record_clean(self) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
        store: dict[tuple[str, int], torch.Tensor] = {}
        adapter = self.model.adapter

        def recorder(key):
            def hook(_module, _args, output):
                store[key] = _site_tensor(output)[0].detach().clone()

            return hook

        hooks = [
            (adapter.site_module(site, layer), recorder((site, layer)))
            for site in self.sites
            for layer in range(adapter.num_layers)
        ]
        with forward_hooks(hooks):
            logits = self._suffix_logits(
                self.clean_suffix, self.clean_positions, self.clean_pattern, self.clean_deepstack
            )
        return logits, store

    def _plan(self, cells: Sequence[Cell]) -> dict[tuple[str, int], PlanEntry]:
        rows: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for row, cell in enumerate(cells):
            if min(cell.positions) < self.p0:
                raise ValueError(f"cell position {min(cell.positions)} lies in the unchanged prefix (< {self.p0})")
            unmapped = [pos for pos in cell.positions if self.position_map[pos] is None]
            if unmapped:
                raise ValueError(f"clean positions {unmapped} have no counterpart in the corrupted run")
            for layer in cell.layers:
                rows.setdefault((cell.site, layer), []).extend(
                    (row, self.position_map[pos] - self.p0, pos - self.p0)  # type: ignore[operator]
                    for pos in cell.positions
                )
        device = self.model.device
        plan = {}
        for key, triples in rows.items():
            index = torch.tensor(triples, dtype=torch.long, device=device)
            r, written, read = index[:, 0], index[:, 1], index[:, 2]
            plan[key] = (r, written, self.activations[key][read])
        return plan

    def run(
        self,
        cells: Sequence[Cell],
        target: int,
        *,
        progress: bool = True,
        desc: str = "restoring",
        on_batch: Callable[[int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Probability of ``target`` at the last position with each cell restored: ``[len(cells)]``.

        ``on_batch(start, probs)`` is called after each batch (live display; it may raise to stop).
        """
        out = np.empty(len(cells), dtype=np.float64)

        def keep_target(start: int, probs: torch.Tensor) -> None:
            out[start : start + len(probs)] = probs[:, target].cpu().numpy()
            if on_batch is not None:
                on_batch(start, out[start : start + len(probs)])

        self._execute(cells, keep_target, progress=progress, desc=desc)
        return out

    def distributions(self, cells: Sequence[Cell]) -> torch.Tensor:
        """Full next-token distributions ``[len(cells), vocab]`` with each cell restored."""
        parts: list[torch.Tensor] = []
        self._execute(cells, lambda _start, probs: parts.append(probs.cpu()), progress=False, desc="")
        return torch.cat(parts) if parts else torch.empty(0)

    def _row_start(self, cell: Cell) -> int:
        """The corrupted position where a cell's restoration can first change the run (a restoration
        inside an image block changes the block's earlier positions too)."""
        first = min(p for p in (self.position_map[p] for p in cell.positions) if p is not None)
        pattern = self.corrupted_pattern
        return first if pattern is None else pattern.restart(first)

    def _batch_start(self, batch: Sequence[Cell]) -> tuple[int, int]:
        """``(layer, corrupted position)`` where a batch's restorations can first change the run."""
        return min(min(cell.layers) for cell in batch), min(self._row_start(cell) for cell in batch)

    @property
    def _packs(self) -> bool:
        """Whether partial batches run packed (:meth:`PartialDecoder.run_packed`; not with DeepStack)."""
        return self.corrupted_deepstack is None

    def _partial_batches(self, cells: Sequence[Cell]) -> list[tuple[int, int]]:
        """Contiguous ``(start, stop)`` runs of cells for the partial plan: at most ``batch_size``
        cells, split where the lowest restored layer changes (so a batch shares its start layer) and,
        packed, before the rows' tokens pass :data:`PACK_TOKENS` prompt lengths (a packed run's attention
        reads ``T + N`` keys per token)."""
        length = self.corrupted.shape[1]
        batches, start, tokens = [], 0, 0
        for i in range(len(cells)):
            span = length - self._row_start(cells[i]) if self._packs else 0
            if i > start and (
                i - start == self.batch_size
                or min(cells[i].layers) != min(cells[start].layers)
                or tokens + span > PACK_TOKENS * length
            ):
                batches.append((start, i))
                start, tokens = i, 0
            tokens += span
        return [*batches, (start, len(cells))] if cells else []

    def choose_plan(self, cells: Sequence[Cell]) -> str:
        """ "prefix" or "partial" for these cells (``plan`` unless it is "auto"): estimated
        position-layer computations of each, the partial plan paying one base run (of the suffix
        ``[p0, T)``: it starts on the shared prefix)."""
        if self.plan != "auto" or not cells:
            return "prefix" if self.plan == "auto" else self.plan
        layers, length = self.model.num_layers, self.corrupted.shape[1]
        prefix = len(cells) * layers * (length - self.p0)
        partial = layers * (length - self.p0)
        for start, stop in self._partial_batches(cells):
            batch = cells[start:stop]
            layer, first = self._batch_start(batch)
            if self._packs:  # the start layer on the restored tokens alone, the rows from one layer up
                tokens = sum(length - self._row_start(c) for c in batch)
                partial += (layers - layer - 1) * tokens + sum(len(c.positions) for c in batch)
            else:
                partial += (layers - layer) * len(batch) * (length - first)
        return "partial" if partial < PARTIAL_ADVANTAGE * prefix else "prefix"

    def _execute(
        self, cells: Sequence[Cell], consume: Callable[[int, torch.Tensor], None], *, progress: bool, desc: str
    ) -> None:
        self.last_plan = self.choose_plan(cells)
        if self.last_plan == "partial":
            self._execute_partial(cells, consume, progress=progress, desc=desc)
            return
        adapter = self.model.adapter
        plan: dict[tuple[str, int], PlanEntry] = {}

        def restorer(key):
            def hook(_module, _args, output):
                entry = plan.get(key)
                if entry is None:
                    return None
                rows, pos, values = entry
                tensor = _site_tensor(output).index_put((rows, pos), values.to(_site_tensor(output).dtype))
                return _with_site_tensor(output, tensor)

            return hook

        sites = sorted({c.site for c in cells})
        hooks = [
            (adapter.site_module(site, layer), restorer((site, layer)))
            for site in sites
            for layer in range(adapter.num_layers)
        ]
        starts = range(0, len(cells), self.batch_size)
        bar = tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, unit="batch")
        with forward_hooks(hooks), torch.no_grad():
            for start in bar:
                batch = cells[start : start + self.batch_size]
                plan.clear()
                plan.update(self._plan(batch))
                suffix = self.corrupted_suffix.expand(len(batch), -1, -1)
                logits = self._suffix_logits(
                    suffix, self.corrupted_positions, self.corrupted_pattern, self.corrupted_deepstack
                )
                consume(start, torch.softmax(logits, dim=-1))

    def _partial_decoder(self) -> PartialDecoder:
        """The corrupted run recorded for partial restarts (made once, on first use)."""
        from mllm_lens.tracing.partial import PartialDecoder

        if self._partial is None:
            self._partial = PartialDecoder(
                self.model,
                self.corrupted,
                max_batch=self.batch_size,
                positions=self.corrupted_positions,
                pattern=self.corrupted_pattern,
                deepstack=self.corrupted_deepstack,
                prefix=None if self.shared is None else self.shared.prefix,
            )
        return self._partial

    def _execute_partial(
        self, cells: Sequence[Cell], consume: Callable[[int, torch.Tensor], None], *, progress: bool, desc: str
    ) -> None:
        decoder = self._partial_decoder()
        batches = self._partial_batches(cells)
        bar = tqdm(batches, desc=desc, disable=not progress or len(batches) < 2, unit="batch")
        with torch.no_grad():
            for start, stop in bar:
                batch = cells[start:stop]
                layer, first = self._batch_start(batch)
                # plan positions count from p0; a packed run's are absolute, a rectangular run's from `first`
                shift = self.p0 if self._packs else self.p0 - first
                plan = {key: (rows, pos + shift, values) for key, (rows, pos, values) in self._plan(batch).items()}
                if self._packs:
                    logits = decoder.run_packed(layer, [self._row_start(cell) for cell in batch], plan)
                else:
                    hidden = decoder.input_from(layer, first).expand(len(batch), -1, -1).clone()
                    logits = decoder.run(layer, first, hidden, plan)
                consume(start, torch.softmax(logits, dim=-1))
