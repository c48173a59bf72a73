"""Small I/O helpers: atomic writes and rounded reports."""

from __future__ import annotations

import pytest

from mllm_lens.io import atomic_path, rounded


def test_rounded_reaches_floats_nested_in_dicts_and_lists():
    report = {"a": [1.234567, {"b": 2.00000049}], "n": 3, "name": "x"}
    assert rounded(report) == {"a": [1.2346, {"b": 2.0}], "n": 3, "name": "x"}
    assert rounded(0.123456, 2) == 0.12


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
