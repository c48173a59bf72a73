"""Tiny models built offline for tests, benchmarks and examples (no downloads)."""

from mllm_lens.testing.tiny import (
    WORDS,
    build_tokenizer,
    random_llava,
    tiny_llava,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_llava_phi,
    tiny_mistral3,
    tiny_vipllava,
)
from mllm_lens.testing.tiny_gemma3 import tiny_gemma3
from mllm_lens.testing.tiny_idefics3 import tiny_idefics3, tiny_smolvlm
from mllm_lens.testing.tiny_internvl import tiny_internvl
from mllm_lens.testing.tiny_paligemma import tiny_paligemma
from mllm_lens.testing.tiny_qwen2_vl import tiny_qwen2_5_vl, tiny_qwen2_vl
from mllm_lens.testing.tiny_qwen3_vl import tiny_qwen3_vl, tiny_qwen3_vl_moe

__all__ = [
    "WORDS",
    "build_tokenizer",
    "random_llava",
    "tiny_gemma3",
    "tiny_idefics3",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_llava_phi",
    "tiny_mistral3",
    "tiny_paligemma",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
    "tiny_qwen3_vl_moe",
    "tiny_smolvlm",
    "tiny_vipllava",
]
