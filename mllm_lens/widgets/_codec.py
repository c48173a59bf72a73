"""numpy arrays across the widget wire as binary buffers, never JSON lists of floats.

An array is sent as ``{"view": memoryview, "dtype": "float32", "shape": [...]}`` (C order);
ipywidgets lifts the memoryview out of the JSON state into a binary buffer, and the front end
(``js/src/codec.js``) reads it as a typed array, honouring the buffer's byteOffset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = ("float32", "float64", "int32", "uint8")


def array_to_json(value: np.ndarray | None, _widget: Any = None) -> dict | None:
    """Serialise an array (float data as float32) for the front end."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind == "f" or array.dtype.name not in DTYPES:
        array = array.astype(np.float32)
    array = np.ascontiguousarray(array)
    return {"view": array.reshape(-1).data.cast("B"), "dtype": array.dtype.name, "shape": list(array.shape)}


def array_from_json(payload: dict | None, _widget: Any = None) -> np.ndarray | None:
    """Inverse of :func:`array_to_json` (``view``/``buffer`` may be bytes or a memoryview)."""
    if payload is None:
        return None
    dtype = payload.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}")
    raw = payload.get("view", payload.get("buffer"))
    if raw is None:
        raise ValueError("the array payload has no 'view' (or 'buffer') bytes")
    shape = tuple(int(n) for n in payload["shape"])
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape).copy()


ARRAY = {"to_json": array_to_json, "from_json": array_from_json}
