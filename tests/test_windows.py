"""What a window covers, pinned by a table written from the two conventions' definitions.

``paper`` (Basu et al.'s released code): w = 1 restores layer l alone; w > 1 restores
l - w ... l + w (2w + 1 layers), clipped to the model. ``rome`` (Meng et al.): w consecutive
layers with l at index w // 2, clipped. Both the fast path and the oracle are checked against
the table, so an off-by-one in either fails here.
"""

from __future__ import annotations

import pytest

from mllm_lens.tracing.reference import oracle_window
from mllm_lens.tracing.windows import window_layers

# (layer, window, mode, num_layers) -> layers restored
TABLE = [
    (0, 1, "paper", 8, (0,)),
    (7, 1, "paper", 8, (7,)),
    (4, 2, "paper", 8, (2, 3, 4, 5, 6)),
    (0, 2, "paper", 8, (0, 1, 2)),
    (7, 2, "paper", 8, (5, 6, 7)),
    (1, 3, "paper", 8, (0, 1, 2, 3, 4)),
    (3, 3, "paper", 8, (0, 1, 2, 3, 4, 5, 6)),
    (6, 3, "paper", 8, (3, 4, 5, 6, 7)),
    (0, 1, "rome", 8, (0,)),
    (4, 2, "rome", 8, (3, 4)),
    (0, 2, "rome", 8, (0,)),
    (7, 2, "rome", 8, (6, 7)),
    (4, 3, "rome", 8, (3, 4, 5)),
    (0, 3, "rome", 8, (0, 1)),
    (7, 3, "rome", 8, (6, 7)),
    (4, 4, "rome", 8, (2, 3, 4, 5)),
    (1, 4, "rome", 8, (0, 1, 2)),
    (7, 4, "rome", 8, (5, 6, 7)),
    (5, 5, "rome", 8, (3, 4, 5, 6, 7)),
    (2, 6, "rome", 8, (0, 1, 2, 3, 4)),
    (4, 6, "rome", 8, (1, 2, 3, 4, 5, 6)),
]


@pytest.mark.parametrize("layer,window,mode,n,expected", TABLE)
def test_fast_path_window(layer, window, mode, n, expected):
    assert window_layers(layer, window, mode, n) == expected


@pytest.mark.parametrize("layer,window,mode,n,expected", TABLE)
def test_oracle_window(layer, window, mode, n, expected):
    assert tuple(oracle_window(layer, window, mode, n)) == expected


def test_the_two_conventions_differ_for_the_same_w():
    assert window_layers(4, 3, "paper", 12) != window_layers(4, 3, "rome", 12)
    assert len(window_layers(6, 3, "paper", 12)) == 7 and len(window_layers(6, 3, "rome", 12)) == 3
