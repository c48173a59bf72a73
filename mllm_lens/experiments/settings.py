"""The settings of one dataset run: everything that decides its numbers, saved in its manifest."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from mllm_lens.errors import OptionError
from mllm_lens.models.adapters import SITES
from mllm_lens.tracing.windows import WINDOW_MODES

ANALYSES = ("trace", "patches", "flow")
CORRUPTIONS = ("noise", "image_noise")
TARGETS = ("answer", "prediction")


@dataclass(frozen=True)
class RunSettings:
    """What to compute for every example.

    ``analyses``: "trace" (causal traces of ``sites`` for each window in ``windows``),
    "patches" (per-patch restoration of the image, hidden site, window 1) and "flow" (attention
    flow from the constraint tokens to the last token per layer, with the model's confidence
    and correctness, for the flow-vs-confidence AUROC). ``corruption``: "noise" on the visual
    constraint's embeddings or "image_noise" on the visual tokens, ``noise_scale`` x the
    embeddings' standard deviation, seeded by ``seed``. ``target``: "answer" traces the
    dataset's answer, "prediction" the model's own top-1 token.
    """

    analyses: tuple[str, ...] = ("trace",)
    sites: tuple[str, ...] = ("hidden", "mlp", "attn")
    windows: tuple[int, ...] = (1,)
    window_mode: str = "paper"
    corruption: str = "noise"
    noise_scale: float = 3.0
    seed: int = 0
    target: str = "answer"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values, allowed in (("analyses", self.analyses, ANALYSES), ("sites", self.sites, SITES)):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise OptionError(f"{name} must be a non-empty subset of {allowed}, got {list(values)}")
        if not self.windows or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.windows):
            raise OptionError(f"windows must be integers >= 1, got {list(self.windows)}")
        if self.window_mode not in WINDOW_MODES:
            raise OptionError(f"window_mode must be one of {WINDOW_MODES}, got {self.window_mode!r}")
        if self.corruption not in CORRUPTIONS:
            raise OptionError(f"corruption must be one of {CORRUPTIONS}, got {self.corruption!r}")
        if not self.noise_scale > 0:
            raise OptionError(f"noise_scale must be > 0, got {self.noise_scale!r}")
        if self.target not in TARGETS:
            raise OptionError(f"target must be one of {TARGETS}, got {self.target!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("analyses", "sites", "windows"):
            data[key] = list(data[key])
        return data


def versions() -> dict[str, str]:
    """Package versions that can change numbers (recorded, not compared on resume)."""
    import numpy
    import torch
    import transformers

    import mllm_lens

    return {
        "mllm_lens": mllm_lens.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
