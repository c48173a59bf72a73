"""The benchmarks run end to end: a short run of each, in a subprocess, as a user would start it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRACE_SPEED_KEYS = {
    "speedup_vs_paper_loop",
    "speedup_vs_oracle",
    "image_noise_speedup_vs_paper_loop",
    "image_noise_speedup_vs_oracle",
    "max_abs_diff",
    "time_over_flop_floor",
    "image_noise_time_over_flop_floor",
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
