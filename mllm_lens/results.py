"""Result types: numpy arrays plus labels, saved in an open format (npz with a JSON member)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mllm_lens.io import atomic_path

FORMAT_VERSION = 1


@dataclass
class TraceResult:
    """A causal trace: restored target probability per (layer, position).

    ``scores[l, p]`` is the probability of the target token at the last prompt position when
    the clean ``site`` output at position ``p`` is restored in the window of layers around
    ``l`` (see ``settings["window_mode"]``) during the corrupted run. Positions before the
    first corrupted position are unchanged by any restoration: their score is the corrupted
    probability.
    """

    scores: np.ndarray  # [layers, positions]
    clean_prob: float
    corrupted_prob: float
    target_id: int
    target_token: str
    labels: list[str]
    tokens: list[str]
    constraint_spans: dict[str, tuple[int, int]]
    constraint_kinds: dict[str, str]
    image_span: tuple[int, int]
    patch_grid: tuple[int, int]
    site: str
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def indirect_effect(self) -> np.ndarray:
        """``p_restored - p_corrupted``, ``[layers, positions]``."""
        return self.scores - self.corrupted_prob

    @property
    def normalized_effect(self) -> np.ndarray:
        """``(p_restored - p_corrupted) / (p_clean - p_corrupted)``: 1 = fully restored."""
        gap = self.clean_prob - self.corrupted_prob
        if gap == 0:
            return np.full_like(self.scores, np.nan)
        return self.indirect_effect / gap

    def peak(self) -> tuple[int, int]:
        """``(layer, position)`` of the largest restored probability."""
        layer, pos = np.unravel_index(int(np.argmax(self.scores)), self.scores.shape)
        return int(layer), int(pos)

    def _meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "type": "TraceResult",
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "target_id": self.target_id,
            "target_token": self.target_token,
            "labels": self.labels,
            "tokens": self.tokens,
            "constraint_spans": {k: list(v) for k, v in self.constraint_spans.items()},
            "constraint_kinds": self.constraint_kinds,
            "image_span": list(self.image_span),
            "patch_grid": list(self.patch_grid),
            "site": self.site,
            "settings": self.settings,
            "warnings": self.warnings,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``scores.npy`` and ``meta.json`` into one zip (readable by ``np.load``), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                with zf.open("scores.npy", "w") as fh:
                    np.save(fh, np.ascontiguousarray(self.scores))
                zf.writestr("meta.json", json.dumps(self._meta(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            with zf.open("scores.npy") as fh:
                scores = np.load(fh)
        if meta.get("type") != "TraceResult":
            raise ValueError(f"{path} holds a {meta.get('type')!r}, not a TraceResult")
        return cls(
            scores=scores,
            clean_prob=meta["clean_prob"],
            corrupted_prob=meta["corrupted_prob"],
            target_id=meta["target_id"],
            target_token=meta["target_token"],
            labels=meta["labels"],
            tokens=meta["tokens"],
            constraint_spans={k: tuple(v) for k, v in meta["constraint_spans"].items()},
            constraint_kinds=meta["constraint_kinds"],
            image_span=tuple(meta["image_span"]),
            patch_grid=tuple(meta["patch_grid"]),
            site=meta["site"],
            settings=meta["settings"],
            warnings=meta["warnings"],
        )

    def summary(self) -> str:
        layer, pos = self.peak()
        return (
            f"{self.site} trace of {self.target_token!r}: clean {self.clean_prob:.3f}, corrupted "
            f"{self.corrupted_prob:.3f}, peak {self.scores[layer, pos]:.3f} at layer {layer}, "
            f"position {pos} ({self.labels[pos]})"
        )

    def __repr__(self) -> str:
        return f"<TraceResult {self.scores.shape[0]}x{self.scores.shape[1]}: {self.summary()}>"
