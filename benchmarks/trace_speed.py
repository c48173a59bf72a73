"""Fast tracer vs the paper's released algorithm, measured in the same run.

The paper's code runs, for every (position, layer, site) cell, one forward of the whole
multimodal model on a batch of three rows -- clean, corrupted, corrupted + restored -- over
the full ~620-token sequence. mllm_lens runs the unchanged prefix once, shares its KV cache,
and packs many cells into each suffix-only forward.

Both trace MLP and attention outputs (window 1) on a random LLaVA-1.5-shaped model with the
paper's corruption (the textual constraint replaced by another phrase of the same length) over
the paper's positions (last image token and every text token). The paper loop is timed on a
sample of cells (``--paper-cells``; ``--paper-cells 0`` runs all of them) and its numbers are
checked against the fast tracer's on those cells. The last line is a JSON object of the figures.

    python benchmarks/trace_speed.py                          # CPU preset (8 layers x 512)
    python benchmarks/trace_speed.py --preset llava-7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig

import mllm_lens as ml
from mllm_lens.testing.tiny import build_tokenizer, random_llava
from mllm_lens.tracing.corruption import Replace
from mllm_lens.tracing.windows import window_layers

PRESETS = {
    "cpu": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "llava-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}
QUESTION = "which famous director made this movie that won a Golden Globe and an Oscar in the city of Paris"


def build_model(preset: str, device: str, dtype: torch.dtype) -> ml.LensModel:
    """A random LLaVA-1.5-shaped model: 336px CLIP tower, 14px patches (576 tokens), Llama decoder."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, image_size=336, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=32064,
        max_position_embeddings=4096,
        initializer_range=0.05,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        **PRESETS[preset],
    )
    model, processor = random_llava(text, vision, tokenizer)
    model.to(device=device, dtype=dtype)
    return ml.LensModel.wrap(model, processor, name=f"random-llava-{preset}")


def paper_loop_cell(
    model: ml.LensModel, inputs: dict, corrupted_ids: torch.Tensor, site: str, layers, pos: int, target: int
) -> float:
    """One cell the paper's way: a batch-3 full forward (clean, corrupted, corrupted+restored)."""
    batch = {k: torch.cat([v] * 3) for k, v in inputs.items()}
    batch["input_ids"] = torch.stack([inputs["input_ids"][0], corrupted_ids, corrupted_ids])
    handles = []
    for layer in layers:

        def restore(_module, _args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            tensor = tensor.clone()
            tensor[2, pos] = tensor[0, pos]
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        handles.append(model.adapter.site_module(site, layer).register_forward_hook(restore))
    try:
        with torch.no_grad():
            logits = model.hf_model(**batch).logits[2, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.softmax(logits, -1)[target])


def gemm_rate(device: str, dtype: torch.dtype, m: int, k: int, n: int) -> float:
    """Measured multiply-add throughput (FLOP/s) of an m x k @ k x n matmul."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--paper-cells", type=int, default=12, help="cells per site timed the paper's way (0: all)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    # Random weights: whether the corruption lowers the target is arbitrary; speed and equality are measured.
    warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
    model = build_model(args.preset, args.device, dtype)
    image = Image.fromarray((np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8"))
    probe = ml.Probe(image, QUESTION, [ml.visual("this movie"), ml.textual("Golden Globe")])
    corrupt = ml.replace("this movie", "the film")
    encoded = probe.encode(model)
    img_start, img_end = encoded.image_span
    positions = [img_end - 1, *range(img_end, encoded.length)]  # the paper's: last image token + text
    n_layers = model.num_layers
    print(
        f"model {model.name}: {n_layers} layers, {encoded.length} tokens ({img_end - img_start} image), "
        f"{len(positions)} positions per layer, device {args.device}, {args.dtype}"
    )

    results, fast_seconds = {}, 0.0
    for site in ("mlp", "attn"):
        sync(args.device)
        start = time.perf_counter()
        results[site] = ml.trace(model, encoded, corrupt, site=site, positions=positions, progress=False)
        sync(args.device)
        fast_seconds += time.perf_counter() - start
    p0 = results["mlp"].settings["first_corrupted_position"]
    batch = results["mlp"].settings["batch_size"]
    print(f"fast tracer: {fast_seconds:.2f} s for 2 sites (prefix {p0} tokens cached, batch {batch})")

    corrupted_ids = Replace("this movie", "the film").corrupted_ids(model, encoded).to(args.device)
    rng = np.random.default_rng(0)
    all_cells = [(layer, pos) for layer in range(n_layers) for pos in positions]
    n_sample = len(all_cells) if args.paper_cells <= 0 else min(args.paper_cells, len(all_cells))
    sample = [all_cells[i] for i in sorted(rng.choice(len(all_cells), n_sample, replace=False))]
    diffs, paper_seconds = [], 0.0
    for site in ("mlp", "attn"):
        target = results[site].target_id
        for layer, pos in sample:
            sync(args.device)
            start = time.perf_counter()
            prob = paper_loop_cell(
                model,
                encoded.model_inputs,
                corrupted_ids,
                site,
                window_layers(layer, 1, "paper", n_layers),
                pos,
                target,
            )
            sync(args.device)
            paper_seconds += time.perf_counter() - start
            diffs.append(abs(prob - results[site].scores[layer, pos]))
    per_cell = paper_seconds / (2 * n_sample)
    paper_total = per_cell * 2 * len(all_cells)
    speedup = paper_total / fast_seconds
    max_diff = float(max(diffs))
    print(
        f"paper loop: {per_cell * 1000:.1f} ms per cell, {2 * len(all_cells)} cells -> {paper_total:.1f} s "
        f"({'all' if n_sample == len(all_cells) else f'{n_sample} per site'} timed)"
    )
    print(f"max |fast - paper| over the timed cells: {max_diff:.2e}")

    cfg = model.adapter.language_model.config
    decoder_params = sum(p.numel() for layer in model.adapter.layers for p in layer.parameters())
    computed_cells = 2 * sum(1 for _layer, pos in all_cells if pos >= p0)
    suffix = encoded.length - p0
    rate = gemm_rate(args.device, dtype, 32 * suffix, cfg.hidden_size, cfg.intermediate_size)
    floor = computed_cells * suffix * 2 * decoder_params / rate
    print(
        f"FLOP floor: {computed_cells} cells x {suffix} suffix tokens x 2 x {decoder_params / 1e6:.1f}M params "
        f"at {rate / 1e9:.1f} GFLOP/s = {floor:.2f} s; fast tracer is {fast_seconds / floor:.1f}x that"
    )
    print(f"speed-up vs the paper's loop: {speedup:.1f}x")
    print(
        json.dumps(
            {
                "benchmark": "trace_speed",
                "preset": args.preset,
                "device": args.device,
                "dtype": args.dtype,
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "fast_seconds": round(fast_seconds, 3),
                "paper_seconds_estimated": round(paper_total, 3),
                "paper_cells_timed": 2 * n_sample,
                "speedup_vs_paper_loop": round(speedup, 2),
                "max_abs_diff": max_diff,
                "time_over_flop_floor": round(fast_seconds / floor, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
