"""The support matrix (docs/SUPPORTED_MODELS.md) is current, and refusals name what is missing."""

from __future__ import annotations

import pytest
import torch

import mllm_lens as ml
from mllm_lens.models.adapters import resolve_adapter
from mllm_lens.testing import tiny_llava
from mllm_lens.testing.shrink import tiny_model
from mllm_lens.testing.support_matrix import COLUMNS, DOC, OK, main, parse_rows, render_row, support_row

PASSING = (
    "gemma3",
    "idefics3",
    "internvl",
    "llava",
    "llava_next",
    "llava_onevision",
    "mistral3",
    "paligemma",
    "qwen2_vl",
    "qwen3_vl",
    "smolvlm",
    "vipllava",
)
SUBSET = (*PASSING, "shieldgemma2", "idefics2", "qwen3_vl_moe")


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    torch.set_num_threads(1)
    return {t: support_row(t) for t in SUBSET}


def test_checked_in_rows_are_current(rows):
    on_disk = parse_rows(DOC.read_text())
    assert len(on_disk) == 100
    for model_type, row in rows.items():
        assert on_disk[model_type] == render_row(model_type, row), f"regenerate the row of {model_type}"


def test_supported_types_pass_every_column_and_refused_ones_are_not_tried(rows):
    for model_type in PASSING:
        assert all(rows[model_type][c] == OK for c in COLUMNS), rows[model_type]
    for model_type in ("shieldgemma2", "idefics2"):
        assert rows[model_type]["loads"] != OK
        assert {rows[model_type][c] for c in COLUMNS[1:]} == {"–"}


def test_a_mixture_of_experts_type_traces_and_refuses_multedit(rows):
    """Qwen3-VL-MoE passes every tracing column; MultEdit is refused with the routed MLP named."""
    row = rows["qwen3_vl_moe"]
    assert all(row[c] == OK for c in COLUMNS[:-1]), row
    assert row["MultEdit"].startswith("mixture-of-experts MLP in layer 1 (Qwen3VLMoeTextSparseMoeBlock): fused")


def test_check_flags_a_stale_row(tmp_path):
    doc = tmp_path / "SUPPORTED_MODELS.md"
    doc.write_text(DOC.read_text())
    assert main(["--check", "--only", "shieldgemma2", "--out", str(doc)]) == 0
    row = parse_rows(doc.read_text())["shieldgemma2"]
    doc.write_text(doc.read_text().replace(row, row.replace("not checked", "checked")))
    assert main(["--check", "--only", "shieldgemma2", "--out", str(doc)]) == 1
    assert main(["--only", "shieldgemma2", "--out", str(doc)]) == 0  # rewrites that row
    assert doc.read_text() == DOC.read_text()


@pytest.mark.parametrize(
    "model_type,reason",
    [
        ("shieldgemma2", "only Gemma3ForConditionalGeneration's masks are replayed"),
        ("glm4v", "M-RoPE position ids: .* only for the wrappers checked against the oracle"),
        (
            "granite_docling",
            "DeepStack: .* only for the wrappers checked against the oracle \\(qwen3_vl, qwen3_vl_moe\\)",
        ),
        ("mllama", "through cross-attention layers"),
        ("idefics2", "no patch layout: Idefics2's image tokens are a perceiver resampler's latents"),
        ("deepseek_vl", "missing the wrapper layout .*image-token layout"),
    ],
)
def test_refusal_names_what_is_missing(model_type, reason):
    with pytest.raises(ml.UnsupportedModelError, match=reason):
        resolve_adapter(tiny_model(model_type))


def test_known_wrapper_with_a_non_causal_backbone_is_refused():
    """A wrapper in the adapter table is still refused when its decoder call is not plain causal."""
    model, _ = tiny_llava()
    resolve_adapter(model)
    model.config.text_config.use_bidirectional_attention = True
    with pytest.raises(ml.UnsupportedModelError, match="not causal.*use_bidirectional_attention"):
        resolve_adapter(model)


def test_multimodal_type_without_a_text_vision_pair_is_not_called_text_only():
    with pytest.raises(ml.UnsupportedModelError, match="no vision_config/text_config pair") as info:
        resolve_adapter(tiny_model("fuyu"))
    assert not isinstance(info.value, ml.NotMultimodalError)


def test_the_time_limit_counts_cpu_time_and_stops_a_runaway_row():
    import time

    from mllm_lens.testing.support_matrix import _time_limit, _TimeLimit

    start = time.process_time()
    with pytest.raises(_TimeLimit, match="CPU time"), _time_limit(1):
        while True:
            pass
    # the kernel charges ITIMER_PROF by scheduler ticks: on a loaded machine it fired after 0.83-0.88 s
    # of precisely measured CPU time; what matters is that it counts CPU time, not waiting
    assert time.process_time() - start >= 0.5
    with _time_limit(1):
        time.sleep(1.2)  # waiting costs no CPU time: a loaded machine does not time a row out
