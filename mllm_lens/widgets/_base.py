"""What the widgets share: the bundle, validation of browser messages, and worker threads.

Kernel work started from the browser (a cell restoration, a patch curve, a live trace, an
edit) runs on the widget's daemon worker thread, so the kernel keeps answering the widget
(hover, sliders, Cancel) while it runs. Requests are **queued**, not cancelled: a second click
while one runs waits its turn and both results arrive in click order. At most
:data:`MAX_PENDING` requests wait; a click beyond that is refused with a message in the
widget's ``error`` trait. Jobs of *all* widgets run one at a time (:data:`MODEL_LOCK`): a
restoration patches the model through forward hooks and an edit rewrites its weights, so two
jobs on one model must never overlap. Errors from the browser's messages or from the work
itself never escape into the kernel: they are shown in the widget, worded for people
(``error``, with the Python text in ``error_details``; see ``mllm_lens.widgets._errors``), and
kept in ``errors``. Trait changes that answer one request go out as one comm message
(:func:`batched`): each message is a trip through the Jupyter server and the page.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mllm_lens.errors import MllmLensError
from mllm_lens.export import BUNDLE, bundle_text

if TYPE_CHECKING:
    import ipywidgets

MAX_MESSAGE_BYTES = 16_384  # browser -> kernel requests are indices, never arrays
MAX_PENDING = 8
PATCH_LABEL = re.compile(r"<img (\d+),(\d+)>")  # how the engine labels base-grid image tokens
MODEL_LOCK = threading.Lock()  # held by every widget job (see the module docstring)
_SYNC_LOCK = threading.RLock()  # held around every batch of trait changes (see batched)


def bundle() -> Path:
    """Path of the built front end; raises with the build command when it is missing."""
    bundle_text()
    return BUNDLE


@contextmanager
def batched(widget: ipywidgets.Widget) -> Iterator[None]:
    """``widget.hold_sync()`` (the changes made inside go out as one message), never entered by two
    threads at once: ipywidgets' hold_sync is not thread-safe, and a request handler and the worker
    thread both batch changes of the same widget (a change made by one while the other's batch is
    being sent could be lost)."""
    with _SYNC_LOCK, widget.hold_sync():
        yield


class MessageError(MllmLensError, ValueError):
    """A request the widget refuses; the message is for people (shown in its ``error`` trait),
    ``details`` for whoever debugs it (shown under the page's "details" toggle)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def size_text(size: int) -> str:
    """A byte count for people: ``300 bytes``, ``12 KB``, ``9.1 MB``."""
    if size < 1024:
        return f"{size} bytes"
    if size < 2**20:
        return f"{round(size / 1024)} KB"
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"


def parse_message(content: Any, buffers: list | None, kinds: tuple[str, ...], *, binary: tuple[str, ...] = ()) -> dict:
    """Check a custom message's envelope: a small JSON object with a known ``type``; only the
    types in ``binary`` may carry buffers (check those with :func:`binary_payload`)."""
    if buffers and not (isinstance(content, dict) and content.get("type") in binary):
        raise MessageError(f"unexpected binary buffers ({len(buffers)}) in a request")
    if not isinstance(content, dict):
        raise MessageError(f"a request must be a JSON object, got {type(content).__name__}")
    size = len(json.dumps(content, default=str))
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(f"oversized request ({size} bytes > {MAX_MESSAGE_BYTES})")
    kind = content.get("type")
    if kind not in kinds:
        raise MessageError(f"unknown request type {kind!r} (known: {', '.join(kinds)})")
    return content


def index(content: dict, name: str, size: int) -> int:
    """Integer field ``name`` of a request, checked to lie in ``[0, size)``."""
    value = content.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < size:
        raise MessageError(f"{name} {value} is out of range (0 to {size - 1})")
    return value


def text(content: dict, name: str, max_chars: int, what: str) -> str:
    """Non-empty string field ``name`` of a request (stripped), at most ``max_chars`` long;
    ``what`` names it for people ("question", "new answer")."""
    value = content.get(name)
    if value is not None and not isinstance(value, str):
        raise MessageError(f"the {what} must be text", f"{name} = {value!r}")
    if not value or not value.strip():
        raise MessageError(f"type the {what} first")
    if len(value) > max_chars:
        raise MessageError(f"the {what} is too long: {len(value)} characters, at most {max_chars}")
    return value.strip()


def binary_payload(buffers: list | None, max_bytes: int) -> bytes:
    """The one binary buffer of a request, at most ``max_bytes`` long."""
    if not buffers or len(buffers) != 1:
        raise MessageError(f"expected one binary buffer, got {len(buffers or [])}")
    size = memoryview(buffers[0]).nbytes
    if size == 0:
        raise MessageError("the file is empty")
    if size > max_bytes:
        raise MessageError(f"the file is {size_text(size)}; the limit is {size_text(max_bytes)}")
    return bytes(buffers[0])


class Worker:
    """One daemon thread running submitted jobs in order (see the module docstring)."""

    def __init__(self, on_error: Callable[[BaseException, str], None], max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._on_error = on_error
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None], kind: str = "") -> None:
        """Queue ``job``; ``kind`` (a request type) is passed to ``on_error`` with its exception."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="mllm-lens-widget", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((job, kind))
        except queue.Full:
            waiting = self._queue.maxsize
            raise MessageError(f"busy: {waiting} requests are already waiting, so this one was dropped") from None

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _loop(self) -> None:
        while True:
            job, kind = self._queue.get()
            try:
                with MODEL_LOCK:
                    job()
            except BaseException as err:  # noqa: BLE001 - the worker must survive anything a job raises
                self._on_error(err, kind)
            finally:
                self._queue.task_done()


def patch_positions(labels: Sequence[str]) -> dict[tuple[int, int], int]:
    """``(row, col)`` -> prompt position, from the ``<img r,c>`` labels of a trace."""
    out = {}
    for pos, label in enumerate(labels):
        match = PATCH_LABEL.fullmatch(label)
        if match:
            out[(int(match[1]), int(match[2]))] = pos
    return out
