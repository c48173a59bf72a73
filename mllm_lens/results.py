"""Result types: numpy arrays plus labels, saved in an open format (npz with a JSON member)."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from mllm_lens.errors import FileFormatError, MissingExtraError, MissingFileError
from mllm_lens.io import atomic_path

R = TypeVar("R")

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
        """Read a trace written by :meth:`save`; :class:`~mllm_lens.errors.FileFormatError` if it is not one."""
        arrays, meta = _load_arrays(path, "TraceResult", ("scores",))
        return _build(
            path,
            "TraceResult",
            lambda: cls(
                scores=arrays["scores"],
                clean_prob=meta["clean_prob"],
                corrupted_prob=meta["corrupted_prob"],
                target_id=meta["target_id"],
                target_token=meta["target_token"],
                labels=meta["labels"],
                tokens=meta["tokens"],
                constraint_spans={k: (v[0], v[1]) for k, v in meta["constraint_spans"].items()},
                constraint_kinds=meta["constraint_kinds"],
                image_span=(meta["image_span"][0], meta["image_span"][1]),
                patch_grid=(meta["patch_grid"][0], meta["patch_grid"][1]),
                site=meta["site"],
                settings=meta["settings"],
                warnings=meta["warnings"],
            ),
        )

    def to_html(self, path: str | Path, **options) -> Path:
        """A self-contained page showing this trace's heatmap (no kernel needed); see :mod:`mllm_lens.export`."""
        from mllm_lens import export

        return export.to_html(self, path, **options)

    def to_svg(self, path: str | Path, **options) -> Path:
        """The heatmap as plain SVG (one ``<rect>`` per cell), for papers."""
        from mllm_lens import export

        return export.to_svg(self, path, **options)

    def to_png(self, path: str | Path, **options) -> Path:
        """The heatmap as a PNG drawn with PIL, for papers."""
        from mllm_lens import export

        return export.to_png(self, path, **options)

    def show(self, **options):
        """An interactive :class:`mllm_lens.widgets.TraceHeatmap` of this trace (needs the ``widgets`` extra)."""
        return _widgets("TraceResult.show()").TraceHeatmap(self, **options)

    def summary(self) -> str:
        layer, pos = self.peak()
        return (
            f"{self.site} trace of {self.target_token!r}: clean {self.clean_prob:.3f}, corrupted "
            f"{self.corrupted_prob:.3f}, peak {self.scores[layer, pos]:.3f} at layer {layer}, "
            f"position {pos} ({self.labels[pos]})"
        )

    def __repr__(self) -> str:
        return f"<TraceResult {self.scores.shape[0]}x{self.scores.shape[1]}: {self.summary()}>"


def _save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Arrays as ``<name>.npy`` members plus ``meta.json``, in one zip written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w") as fh:
                    np.save(fh, np.ascontiguousarray(array))
            zf.writestr("meta.json", json.dumps(meta, indent=1))
    return path


def _load_arrays(path: str | Path, kind: str, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
    """The ``names`` arrays and the meta of a ``kind`` result file, or a clear error naming ``path``."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "missing"
        raise (FileFormatError if path.is_dir() else MissingFileError)(f"no {kind} file at {path} ({what})")
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            wanted = ["meta.json", *(f"{name}.npy" for name in names)]
            missing = [m for m in wanted if m not in members]
            if missing:
                raise FileFormatError(
                    f"{path} is not a {kind} file saved by mllm_lens: it has no member {missing[0]!r} "
                    f"(members: {', '.join(sorted(members)[:6]) or 'none'})"
                )
            meta = json.loads(zf.read("meta.json"))
            arrays = {}
            for name in names:
                with zf.open(f"{name}.npy") as fh:
                    arrays[name] = np.load(fh)
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as err:
        raise FileFormatError(
            f"cannot read {path} as a {kind} file (truncated or corrupt: {err}); save the result again"
        ) from err
    if not isinstance(meta, dict) or meta.get("type") != kind:
        found = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise FileFormatError(f"{path} holds a {found!r}, not a {kind}; load it with {found}.load")
    return arrays, meta


def _build(path: str | Path, kind: str, make: Callable[[], R]) -> R:
    """``make()``, with a missing or malformed meta field reported as a :class:`FileFormatError`."""
    try:
        return make()
    except (KeyError, IndexError, TypeError) as err:
        raise FileFormatError(f"{path} is a {kind} file with a missing or malformed field ({err!r})") from err


def _widgets(feature: str):
    """The :mod:`mllm_lens.widgets` package, or a :class:`MissingExtraError` naming the pip command."""
    try:
        import mllm_lens.widgets as widgets
    except ImportError as err:
        if (err.name or "").startswith("mllm_lens"):
            raise
        raise MissingExtraError(
            f"{feature} needs the widgets extra, which is not installed (missing {err.name or err}): "
            'pip install "mllm-lens[widgets]"'
        ) from err
    return widgets


@dataclass
class ContributionResult:
    """Attention contributions (the paper's Eq. 1) from every position to one target position.

    ``per_head[i, h, j]`` = ``||A[h,t,j] v_j^h W_O^h||`` at layer ``layers[i]``; ``total[i, j]`` =
    the norm of the head sum; ``visual[i, r, c]`` = ``total`` of the base-grid patch (r, c)
    (NaN where the grid has no token). The attention output bias is not attributed.
    """

    per_head: np.ndarray  # [layers, heads, positions]
    total: np.ndarray  # [layers, positions]
    target: int
    labels: list[str]
    visual: np.ndarray  # [layers, rows, cols]
    image_span: tuple[int, int]
    patch_grid: tuple[int, int]
    layers: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def top_patches(self, k: int = 5, layers: slice | list[int] | None = None) -> list[tuple[int, int]]:
        """The ``k`` base-grid patches with the largest contribution summed over ``layers`` (rows of ``visual``)."""
        grid = np.nan_to_num(self.visual if layers is None else self.visual[layers]).sum(0)
        order = np.argsort(-grid, axis=None, kind="stable")[:k]
        return [(int(i) // grid.shape[1], int(i) % grid.shape[1]) for i in order]

    def save(self, path: str | Path) -> Path:
        meta = {
            "format_version": FORMAT_VERSION,
            "type": "ContributionResult",
            "target": self.target,
            "labels": self.labels,
            "image_span": list(self.image_span),
            "patch_grid": list(self.patch_grid),
            "layers": self.layers,
            "settings": self.settings,
        }
        return _save_arrays(path, {"per_head": self.per_head, "total": self.total, "visual": self.visual}, meta)

    @classmethod
    def load(cls, path: str | Path) -> ContributionResult:
        """Read a result written by :meth:`save`; :class:`~mllm_lens.errors.FileFormatError` if it is not one."""
        arrays, meta = _load_arrays(path, "ContributionResult", ("per_head", "total", "visual"))
        return _build(
            path,
            "ContributionResult",
            lambda: cls(
                per_head=arrays["per_head"],
                total=arrays["total"],
                visual=arrays["visual"],
                target=meta["target"],
                labels=meta["labels"],
                image_span=(meta["image_span"][0], meta["image_span"][1]),
                patch_grid=(meta["patch_grid"][0], meta["patch_grid"][1]),
                layers=meta["layers"],
                settings=meta["settings"],
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<ContributionResult {self.total.shape[0]} layers x {self.total.shape[1]} positions -> "
            f"{self.target} ({self.labels[self.target]!r})>"
        )


@dataclass
class PatchResult:
    """Per-patch causal tracing of the image's base patch grid.

    ``mode="restore"``: every visual token corrupted, one patch (or a ``block`` x ``block``
    block) restored at the layer window around each layer: ``scores [layers, rows, cols]`` is the
    target probability. ``mode="corrupt"``: only that patch/block corrupted: ``scores [rows,
    cols]`` is the target probability and :attr:`effect` the drop ``clean - scores``. With
    ``block > 1``, cell ``(r, c)`` is the block whose top-left patch is ``(r*stride, c*stride)``.
    """

    scores: np.ndarray
    mode: str
    clean_prob: float
    corrupted_prob: float | None
    target_id: int
    target_token: str
    site: str | None
    block: int
    stride: int
    patch_grid: tuple[int, int]
    image_span: tuple[int, int]
    settings: dict = field(default_factory=dict)

    @property
    def effect(self) -> np.ndarray:
        """Restore: ``p_restored - p_corrupted`` (indirect effect); corrupt: ``p_clean - p_corrupted``."""
        if self.mode == "restore":
            return self.scores - self.corrupted_prob
        return self.clean_prob - self.scores

    def top_patches(self, k: int = 5) -> list[tuple[int, int]]:
        """The ``k`` cells with the largest effect (restore mode: the best layer of each cell)."""
        effect = self.effect if self.mode == "corrupt" else self.effect.max(0)
        order = np.argsort(-effect, axis=None, kind="stable")[:k]
        return [(int(i) // effect.shape[1], int(i) % effect.shape[1]) for i in order]

    def save(self, path: str | Path) -> Path:
        meta = {
            "format_version": FORMAT_VERSION,
            "type": "PatchResult",
            "mode": self.mode,
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "target_id": self.target_id,
            "target_token": self.target_token,
            "site": self.site,
            "block": self.block,
            "stride": self.stride,
            "patch_grid": list(self.patch_grid),
            "image_span": list(self.image_span),
            "settings": self.settings,
        }
        return _save_arrays(path, {"scores": self.scores}, meta)

    @classmethod
    def load(cls, path: str | Path) -> PatchResult:
        """Read a result written by :meth:`save`; :class:`~mllm_lens.errors.FileFormatError` if it is not one."""
        arrays, meta = _load_arrays(path, "PatchResult", ("scores",))
        fields = {k: v for k, v in meta.items() if k not in ("format_version", "type")}
        return _build(
            path,
            "PatchResult",
            lambda: cls(
                scores=arrays["scores"],
                **{
                    **fields,
                    "patch_grid": (fields["patch_grid"][0], fields["patch_grid"][1]),
                    "image_span": (fields["image_span"][0], fields["image_span"][1]),
                },
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<PatchResult {self.mode} {self.scores.shape} of {self.target_token!r}: clean {self.clean_prob:.3f}, "
            f"top {self.top_patches(1)[0]}>"
        )
