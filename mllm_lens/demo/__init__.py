"""The demo model shipped with mllm_lens: a tiny LLaVA that recognises flags and knows facts.

``mllm_lens.load("demo")`` loads it offline through the same ``from_pretrained`` path as any
checkpoint. ``python -m mllm_lens.demo.train`` re-trains it; ``python -m
mllm_lens.demo.evaluate`` re-measures it.
"""

from mllm_lens.demo.build import MODEL_DIR, build_demo_model

__all__ = ["MODEL_DIR", "build_demo_model"]
