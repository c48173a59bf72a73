"""Per-patch sweep (restore mode, hidden site, window 1) vs the per-cell loop, same run.

For every base-grid patch and every layer, the whole image is noised and the patch's clean
hidden state restored after that layer. The per-cell loop runs one full multimodal forward
per cell (:func:`~mllm_lens.tracing.reference.reference_patch_cell`); it is timed on a random
sample of cells, extrapolated, and its probabilities are checked against the fast sweep's on
those cells. The fast sweep (:mod:`mllm_lens.tracing.patches`) runs only positions after the
restored patch through the layers above it, batched.

(a) the shipped demo model (64 visual tokens, 4 layers; falls back to the planted-patch model
    if the demo model is not built yet), whole sweep; also top-k vs random knock-out drops;
(b) the random LLaVA-1.5-shaped model of ``trace_speed.py`` (576 visual tokens, 8 x 512):
    ``--llava-rows`` rows of the 24 x 24 grid (rows symmetric about the centre, so the mean
    restored position is the grid's) swept and extrapolated to the full grid.

    python benchmarks/patch_sweep.py [--llava-rows 2] [--sample 16]
The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mllm_lens as ml
from mllm_lens.tracing.corruption import ImageNoise
from mllm_lens.tracing.knockout import knockout_test
from mllm_lens.tracing.patches import patch_blocks, patch_sweep
from mllm_lens.tracing.reference import reference_clean_outputs, reference_patch_cell

sys.path.insert(0, str(Path(__file__).parent))
from trace_speed import QUESTION, build_model  # noqa: E402


def reference_sample(model, encoded, result, sample: int, seed: int = 0, patches=None) -> tuple[float, float, int]:
    """(seconds per cell, max |fast - reference|, cells timed) of the full-forward loop on a random sample."""
    cells = patch_blocks(encoded)
    if patches is not None:
        cells = [c for c in cells if c[0] in set(patches)]
    noise = ImageNoise()
    start = time.perf_counter()
    _clean, outputs = reference_clean_outputs(model, encoded, "hidden")
    setup = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    grid = [(layer, cell, idx) for layer in range(model.num_layers) for cell, idx in cells]
    picked = [grid[i] for i in rng.choice(len(grid), min(sample, len(grid)), replace=False)]
    start_img = encoded.image_span[0]
    diffs, seconds = [], 0.0
    for layer, cell, idx in picked:
        t0 = time.perf_counter()
        probs = reference_patch_cell(model, encoded, noise, outputs, "hidden", (layer,), [start_img + i for i in idx])
        seconds += time.perf_counter() - t0
        diffs.append(abs(float(probs[result.target_id]) - result.scores[(layer, *cell)]))
    # the loop's one-off clean run, shared by all cells, is charged once per sweep
    return seconds / len(picked) + setup / len(grid), float(max(diffs)), len(picked)


def ascii_grid(effect: np.ndarray, k: int) -> str:
    """'#' on the k patches with the largest effect (best layer), '+' on the next k, '.' elsewhere."""
    flat = np.argsort(-effect, axis=None)
    marks = np.full(effect.shape, ".")
    marks.flat[flat[k : 2 * k]] = "+"
    marks.flat[flat[:k]] = "#"
    return "\n".join(" ".join(row) for row in marks)


def demo_part(args) -> dict:
    try:
        model = ml.load("demo")
        from mllm_lens.data import world

        records = [r for r in world.generate(["France", "Japan"], seed=1) if r.meta["template"] == "capital"][::3]
        probes = [(r.subject, r.probe()) for r in records[:2]]
        name = "demo"
    except FileNotFoundError:
        from mllm_lens.testing.planted_patch import planted_patch_model

        planted = planted_patch_model()
        model, name = planted.model, "planted-patch (demo model not built)"
        probes = [(c, planted.probe(c, seed=3)) for c in ("red", "blue")]
    out = {"demo_model": name}
    for i, (label, probe) in enumerate(probes):
        encoded = probe.encode(model)
        patch_sweep(model, encoded, layers=[0])  # warm-up
        t0 = time.perf_counter()
        result = patch_sweep(model, encoded)
        seconds = time.perf_counter() - t0
        effect = result.effect.max(0)
        print(
            f"\n[{name}] {label}: {probe.question!r} -> {result.target_token!r} clean {result.clean_prob:.3f}, "
            f"all-image-noised {result.corrupted_prob:.3f}; sweep of {result.scores.size} cells {seconds:.2f} s"
        )
        print(ascii_grid(effect, k=4))
        if i == 0:
            per_cell, diff, n = reference_sample(model, encoded, result, args.sample)
            total_ref = per_cell * result.scores.size
            knock = knockout_test(model, encoded, k=args.k, repeats=20)
            print(
                f"per-cell loop: {per_cell * 1000:.1f} ms/cell ({n} timed) -> {total_ref:.1f} s; "
                f"speed-up {total_ref / seconds:.1f}x; max |diff| {diff:.1e}"
            )
            print(knock.summary(), "top patches", knock.top_patches)
            out.update(
                demo_sweep_seconds=round(seconds, 3),
                demo_reference_seconds_estimated=round(total_ref, 2),
                demo_speedup=round(total_ref / seconds, 2),
                demo_max_abs_diff=diff,
                demo_cells=int(result.scores.size),
                topk_knockout_drop=round(knock.topk_drop, 4),
                random_knockout_drop=round(knock.random_mean, 4),
                random_knockout_std=round(knock.random_std, 4),
                knockout_k=args.k,
                top_patches=[list(p) for p in knock.top_patches],
            )
    return out


def llava_part(args) -> dict:
    model = build_model("cpu", "cpu", torch.float32)
    image = Image.fromarray((np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8"))
    encoded = ml.Probe(image, QUESTION, [ml.visual("this movie")]).encode(model)
    rows = encoded.patch_layout.rows
    picked_rows = sorted(
        {rows // 2 - 1 - 6 * i for i in range(args.llava_rows // 2)}
        | {rows // 2 + 6 * i for i in range(args.llava_rows // 2)}
    ) or [rows // 2]
    patches = [(r, c) for r in picked_rows for c in range(encoded.patch_layout.cols)]
    t0 = time.perf_counter()
    result = patch_sweep(model, encoded, patches=patches)
    seconds = time.perf_counter() - t0
    n_all = model.num_layers * rows * encoded.patch_layout.cols
    fast_total = seconds * n_all / (model.num_layers * len(patches))
    per_cell, diff, n = reference_sample(model, encoded, result, args.llava_sample, patches=patches)
    ref_total = per_cell * n_all
    print(
        f"\n[llava-shaped] {encoded.length} tokens, rows {picked_rows}: {len(patches) * model.num_layers} cells "
        f"in {seconds:.1f} s -> full grid ~{fast_total:.0f} s; per-cell loop {per_cell * 1000:.0f} ms/cell "
        f"({n} timed) -> {ref_total:.0f} s; speed-up {ref_total / fast_total:.1f}x; max |diff| {diff:.1e}"
    )
    return {
        "llava_rows": picked_rows,
        "llava_sweep_seconds_estimated": round(fast_total, 1),
        "llava_reference_seconds_estimated": round(ref_total, 1),
        "llava_speedup": round(ref_total / fast_total, 2),
        "llava_max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=24, help="demo cells timed the per-cell way")
    parser.add_argument("--llava-sample", type=int, default=8, help="LLaVA-shaped cells timed the per-cell way")
    parser.add_argument("--llava-rows", type=int, default=2, help="grid rows swept on the LLaVA-shaped model (0: skip)")
    parser.add_argument("-k", type=int, default=4, help="patches knocked out")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    figures = {
        "benchmark": "patch_sweep",
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    figures.update(demo_part(args))
    if args.llava_rows > 0:
        figures.update(llava_part(args))
    figures["sweep_speedup"] = figures["demo_speedup"]
    figures["max_abs_diff"] = max(figures["demo_max_abs_diff"], figures.get("llava_max_abs_diff", 0.0))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
