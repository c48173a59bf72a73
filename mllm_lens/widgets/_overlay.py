"""PatchOverlay: the probe's image under its patch grid, coloured by per-patch values."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import numpy as np
import traitlets as t
from PIL import Image

from mllm_lens.export import SITE_TITLES, describe_corruption
from mllm_lens.results import PatchResult, TraceResult
from mllm_lens.tracing.session import TraceSession
from mllm_lens.widgets._base import MessageError, Worker, batched, bundle, index, parse_message, patch_positions
from mllm_lens.widgets._codec import ARRAY
from mllm_lens.widgets._errors import shown

PatchCallback = Callable[[list[tuple[int, int]]], np.ndarray]
IMAGE_SIDE = 512  # the image is sent as a PNG no larger than this


def png_bytes(image: Image.Image, side: int = IMAGE_SIDE) -> bytes:
    """``image`` as PNG bytes, shrunk to at most ``side`` pixels a side (what crosses the wire)."""
    image = image.convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class PatchOverlay(anywidget.AnyWidget):
    """``image`` beside its ``rows x cols`` patch grid coloured by ``values[layer]`` (``[layers, rows, cols]``).

    The photo (with the grid lines) and the heat grid are drawn side by side, the grid in the
    legend's colours at full opacity, so a cell's colour is the legend's colour for its value
    whatever the photo looks like (``opacity`` is kept for saved states and no longer drawn);
    hovering or selecting a patch outlines it in both. ``corruption`` (the line above the
    figure) names the corruption the values were traced under; ``value_label`` heads the legend.

    A layer slider changes the view in the browser alone. Clicking a patch,
    dragging a box over several, or Enter on the keyboard-focused patch sends ``{type:
    "patches", patches: [[row, col], ...]}``; the kernel calls ``on_patch(patches)`` on the worker
    thread and shows the returned per-layer curve (``curve``, ``[layers]``) beside the image.
    Requests are queued, never cancelled (see ``mllm_lens.widgets._base``). Without ``on_patch``
    (``clickable`` false) a click only selects patches (``selected``): no run is promised.

    Colours follow ``scale`` as in :class:`~mllm_lens.widgets.TraceHeatmap`: with ``clean_prob``
    and ``corrupted_prob`` set (:meth:`from_trace` and :meth:`from_sweep` set them) the anchored scale spans indirect
    effect from 0 to clean − corrupted; without them, from 0 to the values' extreme.
    """

    _esm = bundle()
    _widget = t.Unicode("overlay").tag(sync=True)
    image = t.Bytes(b"").tag(sync=True)  # PNG
    values = t.Any(None).tag(sync=True, **ARRAY)  # float32 [layers, rows, cols]
    layer = t.Int(0).tag(sync=True)
    opacity = t.Float(0.6, min=0.0, max=1.0).tag(sync=True)  # unused: the grid is beside the photo
    title = t.Unicode("").tag(sync=True)
    colormap = t.Enum(("viridis", "cividis", "greys"), "viridis").tag(sync=True)
    scale = t.Enum(("anchored", "fixed", "auto"), "anchored").tag(sync=True)
    value_label = t.Unicode("value").tag(sync=True)  # what the values are, for the legend
    corruption = t.Unicode("").tag(sync=True)  # the line above the figure: which corruption the values used
    target_token = t.Unicode("").tag(sync=True)  # the answer token whose restored p the curve plots
    clean_prob = t.Float(None, allow_none=True).tag(sync=True)
    corrupted_prob = t.Float(None, allow_none=True).tag(sync=True)
    vmin = t.Float(None, allow_none=True).tag(sync=True)
    vmax = t.Float(None, allow_none=True).tag(sync=True)
    selected: t.List[Any] = t.List().tag(sync=True)  # [[row, col], ...] of the last request
    curve = t.Any(None).tag(sync=True, **ARRAY)  # float32 [layers] returned by on_patch
    curve_label = t.Unicode("").tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)
    error = t.Unicode("").tag(sync=True)  # a plain sentence (see mllm_lens.widgets._errors)
    error_details = t.Unicode("").tag(sync=True)  # the Python exception behind it
    clickable = t.Bool(False).tag(sync=True)  # a click computes a curve (on_patch is set)
    clicks_done = t.Int(0).tag(sync=True)  # on_patch calls the kernel has finished

    def __init__(
        self,
        image: Image.Image,
        values: np.ndarray,
        on_patch: PatchCallback | None = None,
        title: str = "",
        **kwargs: Any,
    ) -> None:
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 3 or 0 in values.shape:
            raise ValueError(f"values must be [layers, rows, cols], got shape {values.shape}")
        super().__init__(image=png_bytes(image), values=values, title=title, **kwargs)
        self.on_patch = on_patch
        self.curves: list[tuple[list[tuple[int, int]], np.ndarray]] = []
        self.errors: list[BaseException] = []
        self._worker = Worker(lambda err, _kind: self._fail(err, in_worker=True))
        self.on_msg(self._on_message)

    @property
    def on_patch(self) -> PatchCallback | None:
        """The callback a click runs; setting it makes the overlay ``clickable``."""
        return self._on_patch

    @on_patch.setter
    def on_patch(self, callback: PatchCallback | None) -> None:
        self._on_patch = callback
        self.clickable = callback is not None

    @classmethod
    def from_trace(
        cls, result: TraceResult, image: Image.Image, on_patch: PatchCallback | None = None, **kwargs: Any
    ) -> PatchOverlay:
        """Values = the trace's indirect effect at each patch's position, ``[layers, rows, cols]``;
        the legend, the curve's title and the corruption line are worded from the trace."""
        rows, cols = result.patch_grid
        values = np.full((result.num_layers, rows, cols), np.nan, dtype=np.float32)
        for (r, c), pos in patch_positions(result.labels).items():
            if r < rows and c < cols:
                values[:, r, c] = result.indirect_effect[:, pos]
        site = SITE_TITLES.get(result.site, result.site)
        kwargs.setdefault("title", f"{site} indirect effect per patch")
        kwargs.setdefault("value_label", f"indirect effect of restoring the patch's {site}")
        kwargs.setdefault("corruption", describe_corruption(result.settings.get("corruption")))
        kwargs.setdefault("target_token", result.target_token)
        kwargs.setdefault("clean_prob", float(result.clean_prob))
        kwargs.setdefault("corrupted_prob", float(result.corrupted_prob))
        return cls(image, values, on_patch, **kwargs)

    @classmethod
    def from_sweep(
        cls, sweep: PatchResult, image: Image.Image, on_patch: PatchCallback | None = None, **kwargs: Any
    ) -> PatchOverlay:
        """Values = a restore-mode :func:`~mllm_lens.patch_sweep`'s indirect effect ``[layers, rows,
        cols]`` (one row per swept layer), worded and anchored like :meth:`from_trace` on the sweep's
        clean and corrupted probabilities (without them a small effect would fill the whole ramp)."""
        if sweep.mode != "restore" or sweep.corrupted_prob is None:
            raise ValueError(f"from_sweep needs a restore-mode sweep, got mode {sweep.mode!r}")
        site = SITE_TITLES.get(sweep.site or "hidden", sweep.site or "hidden")
        noised = (sweep.settings.get("noise") or {}).get("patches")
        kwargs.setdefault("title", f"{site} indirect effect per patch")
        kwargs.setdefault("value_label", f"indirect effect of restoring the patch's {site}")
        kwargs.setdefault("corruption", describe_corruption({"kind": "image_noise", "patches": noised}))
        kwargs.setdefault("target_token", sweep.target_token)
        kwargs.setdefault("clean_prob", float(sweep.clean_prob))
        kwargs.setdefault("corrupted_prob", float(sweep.corrupted_prob))
        return cls(image, sweep.effect, on_patch, **kwargs)

    @property
    def num_layers(self) -> int:
        return int(np.shape(self.values)[0])

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until queued patch requests are done; False on timeout."""
        return self._worker.wait(timeout)

    def request(self, patches: Sequence[tuple[int, int]]) -> None:
        """What a click does, from Python: queue ``on_patch(patches)``."""
        self._on_message(self, {"type": "patches", "patches": [list(p) for p in patches]})

    def _on_message(self, _widget: Any, content: Any, buffers: list | None = None) -> None:
        try:
            request = parse_message(content, buffers, ("patches",))
            _, rows, cols = np.shape(self.values)
            raw = request.get("patches")
            if not isinstance(raw, list) or not raw or len(raw) > rows * cols:
                raise MessageError(f"patches must be a non-empty list of at most {rows * cols} [row, col] pairs")
            patches = []
            for item in raw:
                if not isinstance(item, list) or len(item) != 2:
                    raise MessageError(f"a patch must be [row, col], got {item!r}")
                pair = {"row": item[0], "col": item[1]}
                patches.append((index(pair, "row", rows), index(pair, "col", cols)))
            clickable = self.on_patch is not None  # without a callback a click only selects
            with batched(self):
                self.error = self.error_details = ""
                self.selected = [list(p) for p in patches]
                if clickable:
                    self.status = "running"
            if clickable:
                self._worker.submit(lambda: self._patch_job(patches))
        except Exception as err:  # noqa: BLE001 - nothing from the browser may crash the kernel
            self._fail(err)

    def _fail(self, err: BaseException, in_worker: bool = False) -> None:
        self.errors.append(err)
        message = shown(err, "Computing the patch curve")
        with batched(self):
            self.error, self.error_details = message.message, message.details
            if self._worker.pending <= int(in_worker):
                self.status = "idle"

    def _patch_job(self, patches: list[tuple[int, int]]) -> None:
        if self.on_patch is None:
            raise MessageError("the overlay's on_patch callback was removed before this click ran")
        curve = np.asarray(self.on_patch(patches), dtype=np.float32).reshape(-1)
        if curve.size == 0:
            raise ValueError("on_patch returned an empty curve")
        self.curves.append((patches, curve))
        where = " ".join(f"({r},{c})" for r, c in patches[:6]) + (" …" if len(patches) > 6 else "")
        with batched(self):
            self.clicks_done += 1
            self.curve_label = f"{len(patches)} patch{'es' if len(patches) > 1 else ''} {where}"
            self.curve = curve
            if self._worker.pending <= 1:
                self.status = "idle"


def patch_curve(
    session: TraceSession, site: str = "hidden", window: int = 1, window_mode: str = "paper"
) -> PatchCallback:
    """An ``on_patch`` callback: restore ``site`` at the picked patches' visual tokens together
    (one patch, or the region of a dragged box), at every layer, and return the restored
    probability ``[layers]`` (:meth:`TraceSession.region_curve`)."""
    positions = patch_positions(session.encoded.labels)

    def on_patch(patches: list[tuple[int, int]]) -> np.ndarray:
        picked = sorted({positions[(r, c)] for r, c in patches if (r, c) in positions})
        if not picked:
            raise ValueError(f"no visual token for patches {patches}")
        return session.region_curve(site, picked, window, window_mode)

    return on_patch
