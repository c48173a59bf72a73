"""Reversible edit handles.

Every editing method (MultEdit and the fine-tuning baselines) changes a few weight matrices
in place and returns an :class:`Edit`. The handle keeps a copy of each original matrix and of
its edited version, so the edit can be undone bit-exactly (``edit.undo()``, or leaving a
``with`` block -- also by an exception or KeyboardInterrupt), re-applied, suspended for
before/after measurements, and saved as an edited copy of the checkpoint. While the edit is
being computed, :func:`guarded` restores the originals if anything is raised.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mllm_lens.editing.requests import EditRequest
from mllm_lens.errors import EditError
from mllm_lens.models.lens_model import LensModel


def _names(model: LensModel, params: Sequence[nn.Parameter]) -> list[str]:
    lookup = {id(p): name for name, p in model.hf_model.named_parameters()}
    return [lookup.get(id(p), f"param{i}") for i, p in enumerate(params)]


@contextmanager
def guarded(params: Sequence[nn.Parameter]) -> Iterator[list[torch.Tensor]]:
    """Yield copies of ``params``; if the block raises (anything), write them back and re-raise."""
    originals = [p.detach().clone() for p in params]
    try:
        yield originals
    except BaseException:
        with torch.no_grad():
            for param, original in zip(params, originals, strict=True):
                param.copy_(original)
        raise


@dataclass
class Edit:
    """An applied edit of ``model`` (see the module docstring). ``info`` holds per-request
    diagnostics (new answer's probability with δ in place, ‖δ‖/‖v0‖, ...)."""

    model: LensModel
    method: str
    requests: list[EditRequest]
    layers: list[int]
    site: str
    hyperparameters: dict
    params: list[nn.Parameter]
    originals: list[torch.Tensor]
    edited: list[torch.Tensor] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    applied: bool = True

    def __post_init__(self) -> None:
        if not self.edited:
            self.edited = [p.detach().clone() for p in self.params]
        self.names = _names(self.model, self.params)

    def __repr__(self) -> str:
        state = "applied" if self.applied else "undone"
        return (
            f"Edit({self.method}, {len(self.requests)} request(s), site={self.site!r}, layers={self.layers}, {state})"
        )

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc) -> None:  # exceptions propagate
        if self.applied:
            self.undo()

    def _write(self, tensors: list[torch.Tensor], expect: list[torch.Tensor], what: str) -> None:
        for name, param, before in zip(self.names, self.params, expect, strict=True):
            if not torch.equal(param.detach(), before):
                raise EditError(
                    f"cannot {what} this edit: {name} was changed after it (undo later edits first, in reverse order)"
                )
        with torch.no_grad():
            for param, value in zip(self.params, tensors, strict=True):
                param.copy_(value)

    def undo(self) -> None:
        """Write the original weights back (bit-identical). Undoing twice is a no-op."""
        if self.applied:
            self._write(self.originals, self.edited, "undo")
            self.applied = False

    def apply(self) -> None:
        """Re-apply an undone edit."""
        if not self.applied:
            self._write(self.edited, self.originals, "re-apply")
            self.applied = True

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The original model inside the block, the edited one after it."""
        was = self.applied
        self.undo()
        try:
            yield
        finally:
            if was:
                self.apply()

    @contextmanager
    def active(self) -> Iterator[None]:
        """The edited model inside the block, the previous state after it."""
        was = self.applied
        self.apply()
        try:
            yield
        finally:
            if not was:
                self.undo()

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """``{parameter name: edited − original}`` in float32."""
        return {n: e.float() - o.float() for n, e, o in zip(self.names, self.edited, self.originals, strict=True)}

    def describe(self) -> dict:
        return {
            "method": self.method,
            "site": self.site,
            "layers": self.layers,
            "parameters": self.names,
            "hyperparameters": self.hyperparameters,
            "requests": [
                {"question": r.probe.question, "new_answer": r.new_answer, "subject": r.subject} for r in self.requests
            ],
        }

    def _sources(self) -> set[Path]:
        found = set()
        for source in (self.model.name, getattr(self.model.hf_model.config, "_name_or_path", "")):
            if source and Path(source).exists():
                found.add(Path(source).resolve())
        return found

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the edited model (and processor) to a new folder ``path``, atomically: into a
        temporary folder beside it, then renamed. The source checkpoint is never written."""
        target = Path(path).expanduser().resolve()
        for source in self._sources():
            if target == source or source in target.parents:
                raise EditError(f"refusing to save the edited model onto its source checkpoint {source}")
        if target.exists() and not overwrite:
            raise EditError(f"{target} exists; pass overwrite=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            with self.active():
                self.model.hf_model.save_pretrained(tmp)
            if hasattr(self.model.processor, "save_pretrained"):
                self.model.processor.save_pretrained(tmp)
            (tmp / "mllm_lens_edit.json").write_text(json.dumps(self.describe(), indent=1, default=str))
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.replace(target, old / "previous")
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target
