"""The benchmarks run end to end: a short run of each, in a subprocess, as a user would start it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_lens.data import world

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRACE_SPEED_KEYS = {
    "speedup_vs_paper_loop",
    "speedup_vs_oracle",
    "image_noise_speedup_vs_paper_loop",
    "image_noise_speedup_vs_oracle",
    "max_abs_diff",
    "time_over_flop_floor",
    "image_noise_time_over_flop_floor",
    "time_over_restoration_weight_floor",
    "image_noise_time_over_restoration_weight_floor",
    "peak_mb",
    "preset",
    "device",
    "dtype",
    "threads",
    "cells_timed",
}


def test_trace_speed_quick_on_the_demo_model():
    """Its last line is the JSON of issue 13, and the fast tracer equals both loops on the timed cells."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "trace_speed.py"), "--preset", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert TRACE_SPEED_KEYS <= figures.keys()
    assert figures["preset"] == "demo" and figures["quick"] is True
    assert figures["max_abs_diff"] <= 1e-5
    assert [row["row"] for row in figures["rows"]] == ["phrase, late", "phrase, early", "image noise"]
    assert all(row["cells_timed"] > 0 and row["time_over_flop_floor"] > 0 for row in figures["rows"])
    assert figures["rows"][2]["plan"] == "partial"  # image noise restarts where each cell changes the run
    for row in figures["rows"]:  # the time split into the session's set-up and the restorations
        assert abs(row["setup_s"] + row["restore_s"] - row["fast_s"]) <= 2e-4
        assert row["setup_over_flop_floor"] > 0 and row["restore_over_flop_floor"] > 0
        # the whole floor (set-up, attention scores) lies above the restorations' weight FLOPs alone
        assert row["time_over_flop_floor"] < row["time_over_restoration_weight_floor"]
        assert row["repeats"] == len(row["time_over_flop_floor_runs"]) == 1  # --quick times one run


@pytest.mark.parametrize(
    ("preset", "model_type", "head_share"),
    [("gemma3-shaped", "gemma3", (0.20, 0.25)), ("qwen2.5-vl-shaped", "qwen2_5_vl", (0.07, 0.10))],
)
def test_family_presets_build_their_wrapper_at_the_documented_proportions(preset, model_type, head_share):
    """The family presets are the family's own wrapper (not a LLaVA stand-in), with the LM head's
    share of the decoder their docstrings state (Gemma 3 4B ~23%, Qwen2.5-VL-7B ~8.4%) and 256
    image tokens in the benchmark's prompt."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import trace_speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    model = trace_speed.build_model(preset, "cpu", torch.float32)
    assert model.hf_model.config.model_type == model_type
    shape = trace_speed.Shape.of(model)
    assert head_share[0] <= shape.head_params / shape.decoder_params <= head_share[1]
    assert shape.layers == 8 and model.adapter.hidden_size == 512
    encoded = trace_speed.rows_for(preset)[0].probe.encode(model)
    start, end = encoded.image_span
    assert 256 <= end - start <= 258  # 256 image tokens, and Gemma 3's start/end-of-image markers


def test_the_flop_floor_counts_what_an_exact_trace_must_compute(monkeypatch):
    """Hand-counted: a partial restart at (layer l, position p) runs layer l at p alone, then [p, T) through
    layers l + 1 .. L-2 and the last layer's keys/values plus its last position; restored after the last
    layer, the LM head alone. The set-up is the clean run over [0, T) and the corrupted run over [p0, T)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trace_speed", BENCHMARKS / "trace_speed.py")
    assert spec is not None and spec.loader is not None
    trace_speed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "trace_speed", trace_speed)  # its dataclasses look their module up
    spec.loader.exec_module(trace_speed)
    shape = trace_speed.Shape(
        layers=4, layer_params=100, kv_params=20, head_params=50, tower_params=0, projector_params=0, attention_width=8
    )
    floor, attention = trace_speed.floor_flops, trace_speed.attention_flops
    token = 2 * 100  # the restored layer at the restored position
    assert floor(shape, "partial", 0, 10, [(0, 5)]) == 2 * (2 * 5 * 100 + 4 * 20 + 100 + 50) + token
    assert floor(shape, "partial", 0, 10, [(0, 5)], restored_token=False) == 2 * (2 * 5 * 100 + 4 * 20 + 100 + 50)
    assert floor(shape, "partial", 0, 10, [(3, 8)]) == 2 * 50 + token
    # keys [0, q] for q in 5..9 (40) through layers 1, 2, the last layer at position 9 (10), the token (6)
    assert attention(shape, "partial", 0, 10, [(0, 5)]) == 4 * 8 * (2 * 40 + 10 + 6)
    assert attention(shape, "partial", 0, 10, [(3, 8)]) == 4 * 8 * 9
    assert floor(shape, "prefix", 6, 10, [(0, 7), (2, 9)]) == 2 * 2 * (3 * 4 * 100 + 3 * 20 + 100 + 50)
    clean = 2 * (3 * 10 * 100 + 9 * 20 + 100 + 50) + 4 * 8 * (3 * 55 + 10)
    corrupted = 2 * (3 * 4 * 100 + 3 * 20 + 100 + 50) + 4 * 8 * (3 * 34 + 10)
    assert trace_speed.setup_flops(shape, 6, 10) == clean + corrupted


def test_edit_tuning_runs_on_the_tuning_requests_only(tmp_path):
    """One grid point: the key geometry and both tuning batches, none of them a report-set country."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "edit_tuning.py"), "--weights", "1000", "--clamps", "1.5"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS,
        env={**os.environ, "MLLM_LENS_CACHE": str(tmp_path)},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < figures["key_energy_in_span"] < 1 and figures["key_effective_rank"] > 1
    (row,) = figures["rows"]
    assert set(row) == {"cov_weight", "clamp", "capitals", "relations"}
    assert all(0 <= row[name]["efficacy"] <= 1 for name in ("capitals", "relations"))
    assert figures["n_specificity"] == 7 * (len(world.training_countries()) - 12)  # the tuning countries left out
