"""Constraint -> last-token attention flow as a signal of whether the model will be right.

The paper reports that mid-layer attention moves the constraint's information to the last
token, and that the size of this flow predicts correctness (AUROC about 0.63, below model
confidence at about 0.76; secondary source). For each record and each layer ``l``:

    flow[l] = sum over constraint tokens j of ||sum_h A[h, last, j] v_j^h W_O^h||

(the head-summed Eq. 1 contribution, :mod:`mllm_lens.tracing.attention`, summed over the
tokens of every constraint of the record). A record is *correct* when the model's greedy first
token equals the first token of the record's answer. The flow of each layer, and of the best
pair of layers (summed; chosen on the same records, so optimistic), is scored by the AUROC of
separating correct from wrong records, beside the AUROC of the model's confidence (max
next-token probability).

AUROC is the Mann-Whitney statistic: the probability that a random correct record scores
higher than a random wrong one, ties counting one half, computed from average ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from mllm_lens.data.records import VQARecord
from mllm_lens.errors import ProbeError, TraceConfigError
from mllm_lens.models.lens_model import LensModel
from mllm_lens.tracing.attention import _check_layers, capture_attention_inputs, layer_contributions


def auroc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Mann-Whitney AUROC of ``scores`` for the ``positive`` class (ties count 1/2)."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {x.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise TraceConfigError(
            f"AUROC needs both classes: {n_pos} positive and {n_neg} negative examples; use more or other records"
        )
    _values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum = average_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class FlowReport:
    """Per-record flows and correctness, and the AUROCs derived from them."""

    layers: list[int]
    flows: np.ndarray  # [records, layers]
    confidence: np.ndarray  # [records]
    correct: np.ndarray  # [records] bool
    layer_auroc: np.ndarray  # [layers]
    best_pair: tuple[int, int] | None
    best_pair_auroc: float | None
    confidence_auroc: float

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    @property
    def n_wrong(self) -> int:
        return int((~self.correct).sum())

    def table(self) -> str:
        """A plain-text table: AUROC per layer, best pair, confidence."""
        lines = [
            f"flow constraint -> last token vs correctness ({self.n_correct} correct, {self.n_wrong} wrong)",
            f"{'signal':<24}{'AUROC':>8}",
        ]
        lines += [
            f"{f'flow layer {layer}':<24}{value:>8.3f}"
            for layer, value in zip(self.layers, self.layer_auroc, strict=True)
        ]
        if self.best_pair is not None:
            pair = f"flow layers {self.best_pair[0]}+{self.best_pair[1]}"
            lines.append(f"{pair:<24}{self.best_pair_auroc:>8.3f}  (best pair, in-sample)")
        lines.append(f"{'confidence (max prob)':<24}{self.confidence_auroc:>8.3f}")
        return "\n".join(lines)


def record_flow(model: LensModel, record: VQARecord, layers: Sequence[int]) -> tuple[np.ndarray, float, bool]:
    """``(flow [layers], confidence, correct)`` of one record."""
    if record.answer is None:
        raise ProbeError(f"record {record.index} ({record.question!r}) has no answer to check correctness against")
    encoded = record.probe().encode(model)
    constraint_positions = sorted({p for a, b in encoded.spans.values() for p in range(a, b)})
    last = encoded.length - 1
    call = model.decoder_call(encoded.model_inputs)
    inputs = capture_attention_inputs(model, call.embeds, layers, call.positions, call.pattern, call.deepstack)
    flow = np.array(
        [layer_contributions(model, inputs, layer, last)[1][constraint_positions].sum() for layer in layers]
    )
    probs = torch.softmax(inputs.logits.float(), -1)
    confidence, top = probs.max(-1)
    return flow, float(confidence), int(top) == encoded.target_id


def flow_auroc(model: LensModel, records: Sequence[VQARecord], layers: Sequence[int] | None = None) -> FlowReport:
    """Constraint -> last-token flow per layer as a correctness predictor (see the module docstring)."""
    chosen = _check_layers(model, layers)
    if not records:
        raise TraceConfigError("flow_auroc needs at least one record")
    rows = [record_flow(model, record, chosen) for record in records]
    flows = np.stack([row[0] for row in rows])
    confidence = np.array([row[1] for row in rows])
    correct = np.array([row[2] for row in rows], dtype=bool)
    layer_auroc = np.array([auroc(flows[:, i], correct) for i in range(len(chosen))])
    best_pair, best_value = None, None
    for i, j in combinations(range(len(chosen)), 2):
        value = auroc(flows[:, i] + flows[:, j], correct)
        if best_value is None or value > best_value:
            best_pair, best_value = (chosen[i], chosen[j]), value
    return FlowReport(
        layers=chosen,
        flows=flows,
        confidence=confidence,
        correct=correct,
        layer_auroc=layer_auroc,
        best_pair=best_pair,
        best_pair_auroc=best_value,
        confidence_auroc=auroc(confidence, correct),
    )
