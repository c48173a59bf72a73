"""One example's rows for a run's analyses: the unit of work of both backends (local and Ray)."""

from __future__ import annotations

import time
import traceback
from typing import Any

import numpy as np
import torch

from mllm_lens.experiments.datasets import Example
from mllm_lens.experiments.settings import RunSettings
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe
from mllm_lens.results import TraceResult
from mllm_lens.tracing.corruption import ConstraintNoise, ImageNoise

#: Token roles of the aggregate figures (the paper's groups).
ROLES = ("visual", "textual", "last", "text", "image_early", "image_late")


def token_roles(result: TraceResult) -> list[str]:
    """Each position's role: a constraint of either kind, the last token, other text, or an
    image token of the first or second half of the image block. A constraint that ends the
    prompt keeps its constraint role on the last position."""
    roles = ["text"] * len(result.labels)
    roles[-1] = "last"
    start, end = result.image_span
    middle = start + (end - start) // 2
    for p in range(start, end):
        roles[p] = "image_early" if p < middle else "image_late"
    for text, (a, b) in result.constraint_spans.items():
        for p in range(a, b):
            roles[p] = result.constraint_kinds.get(text, "textual")
    return roles


def _corruption(settings: RunSettings) -> ConstraintNoise | ImageNoise:
    if settings.corruption == "image_noise":
        return ImageNoise(None, settings.noise_scale, settings.seed)
    return ConstraintNoise(None, settings.noise_scale, settings.seed)


def _trace_rows(model: LensModel, probe: Probe, settings: RunSettings) -> list[dict[str, Any]]:
    from mllm_lens.tracing.session import TraceSession

    started = time.perf_counter()
    session = TraceSession(model, probe, _corruption(settings), settings.sites, warn=False)
    rows = []
    for window in settings.windows:
        for site in settings.sites:
            result = session.trace(site, window, settings.window_mode, progress=False)
            scores = result.scores.astype(np.float64)
            rows.append(
                {
                    "analysis": "trace",
                    "site": site,
                    "window": window,
                    "target": result.target_token,
                    "clean_prob": result.clean_prob,
                    "corrupted_prob": result.corrupted_prob,
                    "n_layers": int(scores.shape[0]),
                    "n_positions": int(scores.shape[1]),
                    "scores": scores.ravel().tolist(),
                    "roles": token_roles(result),
                    "tokens": list(result.labels),
                    "peak_layer": int(result.peak()[0]),
                    "peak_position": int(result.peak()[1]),
                    "notes": " | ".join(session.notes),
                }
            )
    elapsed = time.perf_counter() - started
    for row in rows:
        row["time_s"] = elapsed / len(rows)
    return rows


def _patch_rows(model: LensModel, probe: Probe, settings: RunSettings) -> list[dict[str, Any]]:
    from mllm_lens.tracing.patches import patch_sweep

    started = time.perf_counter()
    noise = ImageNoise(None, settings.noise_scale, settings.seed)
    result = patch_sweep(model, probe, "restore", "hidden", 1, settings.window_mode, noise=noise)
    effect = result.effect.astype(np.float64)  # [layers, rows, cols]
    return [
        {
            "analysis": "patches",
            "site": "hidden",
            "window": 1,
            "target": result.target_token,
            "clean_prob": result.clean_prob,
            "corrupted_prob": result.corrupted_prob,
            "n_layers": int(effect.shape[0]),
            "grid_rows": int(effect.shape[1]),
            "grid_cols": int(effect.shape[2]),
            "scores": effect.ravel().tolist(),
            "time_s": time.perf_counter() - started,
        }
    ]


def _flow_rows(model: LensModel, probe: Probe, settings: RunSettings) -> list[dict[str, Any]]:
    from mllm_lens.tracing.attention import capture_attention_inputs, layer_contributions

    started = time.perf_counter()
    encoded = probe.encode(model)
    constraint_positions = sorted({p for a, b in encoded.spans.values() for p in range(a, b)})
    last = encoded.length - 1
    layers = list(range(model.num_layers))
    with torch.no_grad():
        call = model.decoder_call(encoded.model_inputs)
        inputs = capture_attention_inputs(model, call.embeds, layers, call.positions, call.pattern, call.deepstack)
        flow = [
            float(layer_contributions(model, inputs, layer, last)[1][constraint_positions].sum()) for layer in layers
        ]
        probs = torch.softmax(inputs.logits.float(), -1)
    confidence, top = probs.max(-1)
    correct = None if encoded.target_id is None or settings.target != "answer" else int(top) == encoded.target_id
    return [
        {
            "analysis": "flow",
            "n_layers": len(layers),
            "scores": flow,
            "confidence": float(confidence),
            "correct": correct,
            "time_s": time.perf_counter() - started,
        }
    ]


ANALYSIS_ROWS = {"trace": _trace_rows, "patches": _patch_rows, "flow": _flow_rows}


def example_rows(model: LensModel, example: Example, settings: RunSettings) -> list[dict[str, Any]]:
    """Every analysis of ``example``; a failure becomes one ``status="error"`` row with its
    message (the run goes on), out-of-memory included."""
    base = {"example_id": example.example_id, **{f"meta_{k}": v for k, v in example.meta.items()}}
    rows: list[dict[str, Any]] = []
    for analysis in settings.analyses:
        try:
            probe = example.load()
            if settings.target == "prediction" and probe.answer is not None:
                probe = Probe(probe.image, probe.question, probe.constraints, answer=None, template=probe.template)
            produced = ANALYSIS_ROWS[analysis](model, probe, settings)
            rows.extend({**base, "status": "ok", "error": None, **row} for row in produced)
        except (Exception, torch.OutOfMemoryError) as err:  # noqa: BLE001 - one bad example must not stop the run
            last = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
            where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})" if last else ""
            rows.append(
                {**base, "analysis": analysis, "status": "error", "error": f"{type(err).__name__}: {err}{where}"}
            )
    return rows
