"""Per-patch sweep (restore mode, hidden site, window 1) vs per-cell loops, same run.

For every base-grid patch and every layer, the whole image is noised and the patch's clean
hidden state restored after that layer. Two per-cell loops, each timed on the same random
sample of cells, extrapolated, and checked against the fast sweep's probabilities:

* the paper's loop (what the released tracing code does per cell, applied to a patch): one
  full multimodal forward of a batch of 3 rows -- clean, corrupted, corrupted + restored --
  with the restored row copying the clean row's hidden state (``paper_patch_cell``);
* the oracle: one batch-1 full forward per cell with the clean values recorded once
  (:func:`~mllm_lens.tracing.reference.reference_patch_cell`), the least a plain loop can do.

``sweep_speedup`` is against the paper's loop (as ``trace_speed.py``); both ratios are printed.
The fast sweep (:mod:`mllm_lens.tracing.patches`) runs only positions after the
restored patch through the layers above it, batched.

(a) the shipped demo model (64 visual tokens, 4 layers), whole sweep; also top-k vs random
    knock-out drops over several flags;
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


def paper_patch_cell(model, encoded, noise: ImageNoise, layer: int, positions: list[int]) -> torch.Tensor:
    """One cell the paper's way: a batch-3 full forward (clean, corrupted, corrupted + the
    clean hidden state of ``positions`` after ``layer``); probabilities ``[vocab]`` of row 2."""
    inputs = {k: torch.cat([v] * 3) if torch.is_tensor(v) else v for k, v in encoded.model_inputs.items()}

    def add_noise(_module, args, kwargs):
        embeds = kwargs["inputs_embeds"].clone()
        embeds[1:] = noise.apply(model, encoded, embeds[:1])
        kwargs["inputs_embeds"] = embeds
        return args, kwargs

    def restore(_module, _args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        tensor = tensor.clone()
        tensor[2, positions] = tensor[0, positions]
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    handles = [
        model.adapter.language_model.register_forward_pre_hook(add_noise, with_kwargs=True),
        model.adapter.site_module("hidden", layer).register_forward_hook(restore),
    ]
    try:
        with torch.no_grad():
            logits = model.hf_model(**inputs).logits[2, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return torch.softmax(logits, -1)


def loop_samples(model, encoded, result, sample: int, seed: int = 0, patches=None) -> dict:
    """Seconds per cell and max |fast - loop| of both per-cell loops on one random sample of cells."""
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
    out = {}
    for name in ("paper", "oracle"):
        diffs, seconds = [], 0.0
        for layer, cell, idx in picked:
            positions = [start_img + i for i in idx]
            t0 = time.perf_counter()
            if name == "paper":
                probs = paper_patch_cell(model, encoded, noise, layer, positions)
            else:
                probs = reference_patch_cell(model, encoded, noise, outputs, "hidden", (layer,), positions)
            seconds += time.perf_counter() - t0
            diffs.append(abs(float(probs[result.target_id]) - result.scores[(layer, *cell)]))
        # the oracle's one-off clean run, shared by all cells, is charged once per sweep
        per_cell = seconds / len(picked) + (setup / len(grid) if name == "oracle" else 0.0)
        out[name] = (per_cell, float(max(diffs)))
    out["timed"] = len(picked)
    return out


def ascii_grid(effect: np.ndarray, k: int) -> str:
    """'#' on the k patches with the largest effect (best layer), '+' on the next k, '.' elsewhere."""
    flat = np.argsort(-effect, axis=None)
    marks = np.full(effect.shape, ".")
    marks.flat[flat[k : 2 * k]] = "+"
    marks.flat[flat[:k]] = "#"
    return "\n".join(" ".join(row) for row in marks)


def demo_part(args) -> dict:
    """The shipped demo model on its identity question ("which country does this flag belong to?"):
    sweep time and both loops on the first flag, patch grids of two flags, and the knock-out of
    the top-k patches (by contribution into the visual constraint, the library's default ranking)
    against k random patches, averaged over ``--flags`` flags."""
    from mllm_lens.data import world

    model = ml.load("demo")
    countries = world.training_countries()[: args.flags]
    records = [next(r for r in world.generate([c], seed=1) if r.meta["template"] == "country") for c in countries]
    out: dict = {"demo_model": "demo"}
    for i, record in enumerate(records[:2]):
        encoded = record.probe().encode(model)
        patch_sweep(model, encoded, layers=[0])  # warm-up
        t0 = time.perf_counter()
        result = patch_sweep(model, encoded)
        seconds = time.perf_counter() - t0
        print(
            f"\n[demo] {record.subject}: {record.question!r} -> {result.target_token!r} clean {result.clean_prob:.3f}, "
            f"all-image-noised {result.corrupted_prob:.3f}; sweep of {result.scores.size} cells {seconds:.2f} s"
        )
        print(ascii_grid(result.effect.max(0), k=4))
        if i == 0:
            loops = loop_samples(model, encoded, result, args.sample)
            for loop in ("paper", "oracle"):
                per_cell, diff = loops[loop]
                print(
                    f"{loop} loop: {per_cell * 1000:.1f} ms/cell ({loops['timed']} timed) -> "
                    f"{per_cell * result.scores.size:.1f} s; speed-up {per_cell * result.scores.size / seconds:.1f}x; "
                    f"max |diff| {diff:.1e}"
                )
            out.update(
                demo_sweep_seconds=round(seconds, 3),
                demo_reference_seconds_estimated=round(loops["paper"][0] * result.scores.size, 2),
                demo_speedup=round(loops["paper"][0] * result.scores.size / seconds, 2),
                demo_speedup_vs_oracle=round(loops["oracle"][0] * result.scores.size / seconds, 2),
                demo_max_abs_diff=max(loops["paper"][1], loops["oracle"][1]),
                demo_cells=int(result.scores.size),
            )
    knock: dict[int, dict] = {}
    for k in args.k:
        tests = [knockout_test(model, r.probe(), k=k, repeats=20) for r in records]
        knock[k] = {
            "topk": float(np.mean([t.topk_drop for t in tests])),
            "random": float(np.mean([t.random_mean for t in tests])),
            "random_std": float(np.mean([t.random_std for t in tests])),
            "wins": sum(t.topk_drop > t.random_mean + t.random_std for t in tests),
        }
        print(
            f"knock-out k={k} over {len(tests)} flags: top-k drop {knock[k]['topk']:.3f}, random "
            f"{knock[k]['random']:.3f} +/- {knock[k]['random_std']:.3f}; top-k beats random + 1 sd on "
            f"{knock[k]['wins']}/{len(tests)} flags"
        )
    main_k = args.k[len(args.k) // 2]
    out.update(
        topk_knockout_drop=round(knock[main_k]["topk"], 4),
        random_knockout_drop=round(knock[main_k]["random"], 4),
        random_knockout_std=round(knock[main_k]["random_std"], 4),
        knockout_k=main_k,
        knockout_by_k={k: {n: round(v, 4) for n, v in row.items()} for k, row in knock.items()},
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
    patch_sweep(model, encoded, layers=[0], patches=patches[:2])  # warm-up, as in the demo part
    t0 = time.perf_counter()
    result = patch_sweep(model, encoded, patches=patches)
    seconds = time.perf_counter() - t0
    n_all = model.num_layers * rows * encoded.patch_layout.cols
    fast_total = seconds * n_all / (model.num_layers * len(patches))
    loops = loop_samples(model, encoded, result, args.llava_sample, patches=patches)
    print(
        f"\n[llava-shaped] {encoded.length} tokens, rows {picked_rows}: {len(patches) * model.num_layers} cells "
        f"in {seconds:.1f} s -> full grid ~{fast_total:.0f} s"
    )
    for name in ("paper", "oracle"):
        per_cell, diff = loops[name]
        print(
            f"  {name} loop {per_cell * 1000:.0f} ms/cell ({loops['timed']} timed) -> {per_cell * n_all:.0f} s; "
            f"speed-up {per_cell * n_all / fast_total:.1f}x; max |diff| {diff:.1e}"
        )
    return {
        "llava_rows": picked_rows,
        "llava_sweep_seconds_estimated": round(fast_total, 1),
        "llava_reference_seconds_estimated": round(loops["paper"][0] * n_all, 1),
        "llava_speedup": round(loops["paper"][0] * n_all / fast_total, 2),
        "llava_speedup_vs_oracle": round(loops["oracle"][0] * n_all / fast_total, 2),
        "llava_max_abs_diff": max(loops["paper"][1], loops["oracle"][1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=24, help="demo cells timed the per-cell way")
    parser.add_argument("--llava-sample", type=int, default=8, help="LLaVA-shaped cells timed the per-cell way")
    parser.add_argument("--llava-rows", type=int, default=2, help="grid rows swept on the LLaVA-shaped model (0: skip)")
    parser.add_argument(
        "-k", type=int, nargs="+", default=[8, 16, 48], help="patches knocked out (the middle k goes in the JSON)"
    )
    parser.add_argument("--flags", type=int, default=8, help="demo flags the knock-out is averaged over")
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
    # the floor is judged on the LLaVA-shaped model when it ran, else on the demo model
    figures["sweep_speedup"] = figures.get("llava_speedup", figures["demo_speedup"])
    figures["max_abs_diff"] = max(figures["demo_max_abs_diff"], figures.get("llava_max_abs_diff", 0.0))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
