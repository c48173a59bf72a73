"""Packed partial runs: the layout of ragged rows and the mask that keeps them apart."""

from __future__ import annotations

import pytest
import torch

from mllm_lens.tracing.packed import Packing, Tokens


def test_rows_are_laid_end_to_end_from_their_starts():
    packing = Packing.of([3, 1, 4], 5, torch.device("cpu"))
    assert packing.rows.tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert packing.positions.tolist() == [3, 4, 1, 2, 3, 4, 4]
    assert packing.lasts.tolist() == [1, 5, 6]
    assert packing.index(torch.tensor([1, 2, 0]), torch.tensor([2, 4, 3])).tolist() == [3, 6, 0]


def test_a_row_reads_base_keys_before_its_start_and_its_own_after():
    packing = Packing.of([2, 1], 4, torch.device("cpu"))  # row 0: positions 2, 3; row 1: 1, 2, 3
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    read = packing.mask(causal, torch.float32)[0, 0] == 0  # [5 tokens, 4 base keys + 5 own]
    base, own = read[:, :4], read[:, 4:]
    assert base.tolist() == [[True, True, False, False]] * 2 + [[True, False, False, False]] * 3
    assert own.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, True, True, True],
    ]


def test_rows_must_start_inside_the_run():
    with pytest.raises(ValueError, match="before the run's end"):
        Packing.of([2, 4], 4, torch.device("cpu"))


def test_tokens_are_distinct_sorted_and_indexed():
    tokens = Tokens.of([(torch.tensor([1, 0, 1]), torch.tensor([4, 2, 4])), (torch.tensor([0]), torch.tensor([3]))])
    assert tokens.rows.tolist() == [0, 0, 1] and tokens.positions.tolist() == [2, 3, 4]
    assert tokens.index(torch.tensor([1, 0]), torch.tensor([4, 3])).tolist() == [2, 1]
    assert Tokens.of([], torch.device("cpu")).tokens == 0


def test_a_token_outside_its_rows_span_is_refused():
    packing = Packing.of([3, 1], 5, torch.device("cpu"))
    Tokens.of([(torch.tensor([0, 1]), torch.tensor([3, 1]))]).check_inside(packing)
    with pytest.raises(ValueError, match=r"row 0 restores position 2 outside its run \[3, 5\)"):
        Tokens.of([(torch.tensor([0]), torch.tensor([2]))]).check_inside(packing)
    with pytest.raises(ValueError, match="row 2 of a 2-row batch"):
        Tokens.of([(torch.tensor([2]), torch.tensor([4]))]).check_inside(packing)
