"""The support matrix: what mllm_lens does on each image-text-to-text type of transformers.

For every ``model_type`` of ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` a tiny random-weight
instance is built offline and each feature is tried on it: the adapter resolves (``loads``), a
causal trace runs (``traces``), the fast trace equals the per-cell oracle within 1e-5
(``oracle-equal``), image tokens map onto the patch grid (``patch layout``), Eq. 1 attention
contributions and a MultEdit edit (applied, then undone bit for bit). A cell is ✓ or the
one-line reason it is refused. Types with a builder in :mod:`mllm_lens.testing` (a real
processor, so probes encode as for a checkpoint) use it; the others get
:func:`~mllm_lens.testing.shrink.tiny_model`, which suffices to ask the adapter. Each type runs
under its own time limit, and one broken type cannot stop the walk.

``python -m mllm_lens.testing.support_matrix`` writes ``docs/SUPPORTED_MODELS.md``;
``--check`` exits 1 if that file differs from what would be written; ``--only a,b`` limits
the walk (and the check) to those types.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

import mllm_lens as ml
from mllm_lens.io import atomic_path
from mllm_lens.models.lens_model import LensModel
from mllm_lens.testing.shrink import tiny_model
from mllm_lens.testing.tiny import tiny_llava, tiny_llava_next, tiny_llava_onevision, tiny_mistral3, tiny_vipllava
from mllm_lens.testing.tiny_gemma3 import tiny_gemma3
from mllm_lens.testing.tiny_idefics3 import tiny_idefics3, tiny_smolvlm
from mllm_lens.testing.tiny_internvl import tiny_internvl
from mllm_lens.testing.tiny_paligemma import tiny_paligemma
from mllm_lens.testing.tiny_qwen2_vl import tiny_qwen2_5_vl, tiny_qwen2_vl
from mllm_lens.testing.tiny_qwen3_vl import tiny_qwen3_vl, tiny_qwen3_vl_moe
from mllm_lens.tracing.corruption import as_corruption
from mllm_lens.tracing.reference import reference_trace

COLUMNS = ("loads", "traces", "oracle-equal", "patch layout", "attention contributions", "MultEdit")
OK = "✓"
NOT_TRIED = "–"
TOLERANCE = 1e-5
TIME_LIMIT_S = 300
DOC = Path(__file__).resolve().parents[2] / "docs" / "SUPPORTED_MODELS.md"
COMMAND = "python -m mllm_lens.testing.support_matrix"

#: Types whose tiny builder comes with a real processor (probes encode as for a checkpoint).
BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "gemma3": tiny_gemma3,
    "idefics3": tiny_idefics3,
    "internvl": tiny_internvl,
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "llava_onevision": tiny_llava_onevision,
    "mistral3": tiny_mistral3,
    "paligemma": tiny_paligemma,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "qwen3_vl_moe": tiny_qwen3_vl_moe,
    "smolvlm": tiny_smolvlm,
    "vipllava": tiny_vipllava,
}
#: The oracle cases: (corruption, site), window 1, both window modes.
ORACLE_CASES = (
    (ml.noise("this country"), "hidden"),
    (ml.noise("this country"), "mlp"),
    (ml.image_noise(), "attn"),
)


class _TimeLimit(Exception):
    pass


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Stop the block after ``seconds`` of the process's CPU time (all threads): unlike a wall-clock
    alarm, a loaded or slow CI machine does not turn a passing row into a time-out."""

    def expire(_signum, _frame):
        raise _TimeLimit(f"used more than {seconds} s of CPU time")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _reason(err: BaseException) -> str:
    """One line: the exception's first line, its type name when it has no message."""
    text = str(err).strip().splitlines()
    return text[0].strip() if text else type(err).__name__


def matrix_probe() -> ml.Probe:
    """The probe every type is tried on (a random image; the tiny tokenizers know its words)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8"))
    return ml.Probe(image, "which continent is this country in?", [ml.visual("this country"), ml.textual("continent")])


def _traces(model: LensModel, probe: ml.Probe) -> None:
    result = ml.trace(model, probe, ml.noise("this country"), site="mlp", progress=False)
    if not np.isfinite(result.scores[:, -1]).all():
        raise ValueError("the trace has non-finite scores at the last position")


def _oracle_equal(model: LensModel, probe: ml.Probe) -> None:
    encoded = probe.encode(model)
    for corrupt, site in ORACLE_CASES:
        for mode in ("paper", "rome"):
            window = 1 if mode == "paper" else 3
            ref, _, _, target = reference_trace(model, encoded, as_corruption(corrupt), site, window, mode)
            if not np.nanmax(ref) - np.nanmin(ref) > 1e-3:
                raise ValueError(f"vacuous comparison: no restoration moves p(target) ({site}, {mode} window)")
            fast = ml.trace(model, probe, corrupt, site=site, window=window, window_mode=mode, progress=False)
            diff = float(np.nanmax(np.abs(fast.scores - ref)))
            if fast.target_id != target or not diff <= TOLERANCE:
                raise ValueError(f"fast trace differs from the oracle by {diff:.1e} ({site}, {mode} window {window})")


def _patch_layout(model: LensModel, probe: ml.Probe) -> None:
    encoded = probe.encode(model)
    layout = encoded.patch_layout
    start, end = encoded.image_span
    if len(layout.labels) != end - start:
        raise ValueError(f"{len(layout.labels)} patch labels for {end - start} image tokens")
    for row in range(layout.rows):
        for col in range(layout.cols):
            if layout.grid_index[layout.token_of_patch(row, col)] != row * layout.cols + col:
                raise ValueError(f"patch ({row}, {col}) does not map back to itself")


def _attention_contributions(model: LensModel, probe: ml.Probe) -> None:
    result = ml.attention_contributions(model, probe, target="visual")
    if not np.isfinite(result.visual).all():
        raise ValueError("non-finite contributions")


def _multedit(model: LensModel, probe: ml.Probe) -> None:
    top = ml.trace(model, probe, ml.noise("this country"), site="mlp", progress=False).target_token.strip()
    answer = "Rome" if top != "Rome" else "Paris"
    weight = model.adapter.mlp_out(1).weight
    before = weight.detach().clone()
    with ml.edit(model, probe, answer, layer=1):
        if torch.equal(weight.detach(), before):
            raise ValueError("the edit did not change the MLP output projection")
    if not torch.equal(weight.detach(), before):
        raise ValueError("undoing the edit did not restore the weights bit for bit")


FEATURES: dict[str, Callable[[LensModel, ml.Probe], None]] = {
    "traces": _traces,
    "oracle-equal": _oracle_equal,
    "patch layout": _patch_layout,
    "attention contributions": _attention_contributions,
    "MultEdit": _multedit,
}


def _row(model_type: str) -> dict[str, str]:
    row = dict.fromkeys(COLUMNS, NOT_TRIED)
    try:
        if model_type in BUILDERS:
            hf_model, processor = BUILDERS[model_type]()
        else:
            hf_model, processor = tiny_model(model_type), None
    except Exception as err:  # noqa: BLE001 - any failure to build is the row's reason
        row["loads"] = f"tiny config could not be built: {_reason(err)}"
        return row
    try:
        model = LensModel.wrap(hf_model, processor, name=model_type)
    except ml.UnsupportedModelError as err:
        row["loads"] = _reason(err)
        return row
    except Exception as err:  # noqa: BLE001 - an adapter crash is a bug, recorded as such
        row["loads"] = f"adapter failed with {type(err).__name__}: {_reason(err)}"
        return row
    row["loads"] = OK
    if processor is None:
        for column in FEATURES:
            row[column] = "no tiny builder with a processor in mllm_lens.testing for this type"
        return row
    probe = matrix_probe()
    for column, check in FEATURES.items():
        try:
            check(model, probe)
            row[column] = OK
        except Exception as err:  # noqa: BLE001 - every refusal is recorded, none stops the walk
            row[column] = _reason(err)
    return row


def support_row(model_type: str, time_limit_s: int = TIME_LIMIT_S) -> dict[str, str]:
    """The matrix row of ``model_type``: each column ✓, the refusal, or :data:`NOT_TRIED`."""
    torch.manual_seed(0)
    try:
        with _time_limit(time_limit_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _row(model_type)
    except _TimeLimit as err:
        return {**dict.fromkeys(COLUMNS, NOT_TRIED), "loads": _reason(err)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_row(model_type: str, row: dict[str, str]) -> str:
    return "| " + " | ".join([f"`{model_type}`", *(_cell(row[c]) for c in COLUMNS)]) + " |"


def render(rows: dict[str, dict[str, str]]) -> str:
    """The whole markdown document."""
    lines = [
        "# Supported models",
        "",
        f"Generated with transformers {transformers.__version__} by `{COMMAND}` (do not edit by hand; "
        f"`{COMMAND} --check` tells whether it is current).",
        "",
        f"One row per model type of transformers' `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES` ({len(rows)} "
        "types). Each is tried on a tiny random-weight instance built offline; a cell is ✓ or the reason "
        f"mllm_lens refuses, and {NOT_TRIED} where the model did not load. `oracle-equal`: the fast trace "
        f"equals the per-cell oracle within {TOLERANCE:g} (noise and image noise; hidden, MLP and attention "
        "sites; paper and ROME windows).",
        "",
        "| model_type | " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    lines += [render_row(t, r) for t, r in rows.items()]
    return "\n".join(lines) + "\n"


def parse_rows(text: str) -> dict[str, str]:
    """``{model_type: table line}`` of a rendered document."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


def all_types() -> list[str]:
    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document differs from a fresh one")
    parser.add_argument("--only", default="", help="comma-separated model types (default: all)")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    known = all_types()
    only = [t for t in args.only.split(",") if t]
    unknown = sorted(set(only) - set(known))
    if unknown:
        parser.error(f"not image-text-to-text model types: {', '.join(unknown)}")
    types = only or known
    rows = {}
    for model_type in types:
        rows[model_type] = support_row(model_type)
        print(f"{model_type}: " + ", ".join(f"{c}={rows[model_type][c][:40]}" for c in COLUMNS), file=sys.stderr)
    on_disk = args.out.read_text() if args.out.exists() else ""
    if only:  # the other rows as they stand on disk
        old = parse_rows(on_disk)
        lines = {t: render_row(t, r) for t, r in rows.items()}
        if args.check:
            stale = [t for t in types if old.get(t) != lines[t]]
            if stale:
                print(f"{args.out} is stale for: {', '.join(stale)}; run {COMMAND}", file=sys.stderr)
            return 1 if stale else 0
        if any(t not in old for t in types):
            raise SystemExit(f"{args.out} lacks rows for some of {', '.join(types)}; regenerate it whole")
        text = on_disk
        for model_type, line in lines.items():
            text = text.replace(old[model_type], line)
    else:
        text = render(rows)
        if args.check:
            if text != on_disk:
                print(f"{args.out} differs from what {COMMAND} writes now", file=sys.stderr)
            return 0 if text == on_disk else 1
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
