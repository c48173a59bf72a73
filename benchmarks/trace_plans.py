"""The two restart plans of the trace executor, measured in the same run on the same cells.

"prefix": the unchanged prefix runs once and every batch recomputes the whole suffix from the
first corrupted position, in every layer. "partial": each batch restarts at its lowest restored
layer (on the restored tokens alone there) and first restored position from the corrupted run's
recorded states. Image noise
corrupts from the first image token, so the prefix saves nothing there; a phrase late in the
prompt leaves little for the partial plan to add. Each row traces MLP outputs (window 1) over
every position and reports the time of each plan, their ratio, the plan "auto" picks and the max
abs difference between the plans. The last line is a JSON object.

    python benchmarks/trace_plans.py                 # the shipped demo model and the CPU preset
    python benchmarks/trace_plans.py --demo-only     # the demo model's rows only (a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import warnings

import numpy as np
import torch

import mllm_lens as ml
from mllm_lens.data import world


def timed(model: ml.LensModel, probe: ml.Probe, corrupt, plan: str, repeats: int) -> tuple[float, ml.TraceResult]:
    session = ml.TraceSession(model, probe, corrupt, ("mlp",), warn=False, plan=plan)
    session.trace("mlp", progress=False)  # warm-up (and the partial plan's recorded base run)
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = session.trace("mlp", progress=False)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def row(name: str, model: ml.LensModel, probe: ml.Probe, corrupt, repeats: int) -> dict:
    prefix_s, prefix = timed(model, probe, corrupt, "prefix", repeats)
    partial_s, partial = timed(model, probe, corrupt, "partial", repeats)
    auto = ml.TraceSession(model, probe, corrupt, ("mlp",), warn=False).trace("mlp", progress=False)
    out = {
        "case": name,
        "prefix_s": round(prefix_s, 4),
        "partial_s": round(partial_s, 4),
        "partial_speedup": round(prefix_s / partial_s, 2),
        "auto_plan": auto.settings["plan"],
        "max_abs_diff": float(np.nanmax(np.abs(prefix.scores - partial.scores))),
        "cells": int(np.isfinite(prefix.scores).sum()),
    }
    print(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-only", action="store_true", help="skip the CPU preset's rows")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    demo = ml.load("demo")
    record = world.make_record("Japan", world.template("in_continent"), 0, random.Random(0))
    probe = record.probe()
    rows = [
        row("demo, image noise", demo, probe, ml.image_noise(), repeats=3),
        row("demo, noise on the visual phrase", demo, probe, ml.noise(), repeats=3),
        row("demo, noise on the textual constraint (last)", demo, probe, ml.noise(record.textual_constraints[0]), 3),
    ]
    if args.demo_only:
        print(
            json.dumps(
                {"image_noise_partial_speedup_demo": rows[0]["partial_speedup"], "threads": torch.get_num_threads()}
            )
        )
        return
    from PIL import Image
    from trace_speed import QUESTION, build_model  # the CPU preset: 8 x 512 Llama, 576 image tokens

    preset = build_model("cpu", "cpu", torch.float32)
    image = Image.fromarray((np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8"))
    paper = ml.Probe(image, QUESTION, [ml.visual("this movie"), ml.textual("Golden Globe")])
    rows.append(row("CPU preset, image noise", preset, paper, ml.image_noise(), repeats=1))
    rows.append(row("CPU preset, noise on the visual phrase", preset, paper, ml.noise(), repeats=1))
    summary = {
        "image_noise_partial_speedup_demo": rows[0]["partial_speedup"],
        "image_noise_partial_speedup_cpu_preset": rows[3]["partial_speedup"],
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "auto_plans": {r["case"]: r["auto_plan"] for r in rows},
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
