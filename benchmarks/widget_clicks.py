"""Kernel-side cost of the widgets' clicks: one heatmap cell restoration, one patch curve.

A click on a TraceHeatmap cell runs ``TraceSession.cell`` (one restoration forward plus the
top-k readout); a click on a PatchOverlay patch runs the ``patch_curve`` callback (one batched
trace over every layer at that patch's visual token). Uses the shipped demo model when it
exists, else the planted-fact model (printed). Ends with one JSON line.

    python benchmarks/widget_clicks.py [--clicks 30]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings

import numpy as np

import mllm_lens as ml
from mllm_lens.widgets import patch_curve


def _demo_or_planted() -> tuple[str, ml.LensModel, ml.Probe, str]:
    try:
        model = ml.load("demo")
    except Exception as err:  # noqa: BLE001 - any failure to load means: fall back
        from mllm_lens.testing.planted import planted_fact_model

        print(f"demo model unavailable ({type(err).__name__}: {str(err)[:80]}...); using the planted-fact model")
        planted = planted_fact_model(2)
        return "planted", planted.model, planted.probe("e0"), "e0"
    from mllm_lens.data import world

    record = world.make_record("France", world.template("capital"), 0, random.Random(0))
    return "demo", model, record.probe(), record.main_entity


def _ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(times) * 1000, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=30)
    args = parser.parse_args()
    name, model, probe, entity = _demo_or_planted()
    session = ml.TraceSession(model, probe, ml.noise(entity))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image_session = ml.TraceSession(model, probe, ml.image_noise(), sites=("hidden",))
    rng = random.Random(0)
    p0, length = session.executor.p0, session.encoded.length
    cells = [
        (rng.choice(session.sites), rng.randrange(session.num_layers), rng.randrange(p0, length))
        for _ in range(args.clicks)
    ]
    session.cell(*cells[0])  # warm-up
    cell_times = []
    for site, layer, pos in cells:
        start = time.perf_counter()
        session.cell(site, layer, pos)
        cell_times.append(time.perf_counter() - start)
    on_patch = patch_curve(image_session)
    layout = image_session.encoded.patch_layout
    patches = [(rng.randrange(layout.rows), rng.randrange(layout.cols)) for _ in range(args.clicks)]
    on_patch([patches[0]])
    patch_times = []
    for patch in patches:
        start = time.perf_counter()
        on_patch([patch])
        patch_times.append(time.perf_counter() - start)
    print(
        f"{name} model: {session.num_layers} layers, {length} positions (first corrupted {p0}), "
        f"{layout.rows}x{layout.cols} patches, {args.clicks} clicks each"
    )
    print(
        json.dumps(
            {
                "model": name,
                "cell_click_ms_p50": _ms(cell_times, 50),
                "cell_click_ms_p95": _ms(cell_times, 95),
                "patch_click_ms_p50": _ms(patch_times, 50),
                "patch_click_ms_p95": _ms(patch_times, 95),
            }
        )
    )


if __name__ == "__main__":
    main()
