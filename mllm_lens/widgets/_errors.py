"""How the widgets word an error: one plain sentence in the page, the Python text under "details".

Errors raised on purpose (:class:`~mllm_lens.errors.MllmLensError`, the widgets' own
:class:`~mllm_lens.widgets._base.MessageError` among them) already say what was wrong: the page
shows that message as a sentence, without the exception's class name. Anything else is a
failure the user cannot fix from the page: it names the action that failed, and the exception
with its traceback stays available in the widget's collapsed "details" toggle.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

from mllm_lens.errors import MllmLensError

ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # a Python repr, e.g. of an io.BytesIO
MAX_DETAILS = 4000  # characters of traceback kept (its end: the raising frames)
MAX_MESSAGE = 160  # a longer message shows its first sentence; the whole text goes to details
NEXT_SENTENCE = re.compile(r"(?<=[.:;]) (?=[A-Z])")


@dataclass(frozen=True)
class Shown:
    """What the page shows for one error."""

    message: str
    details: str


def scrub(text: str) -> str:
    """``text`` without Python object reprs such as ``<_io.BytesIO object at 0x7f…>``."""
    return ADDRESS.sub("(in memory)", text)


def sentence(text: str) -> str:
    """``text`` as a sentence: capitalised, ending in a full stop."""
    text = scrub(text).strip()
    if text[:1].islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", "…")) else f"{text}."


def first_sentence(text: str) -> str:
    """``text``, or its first sentence when it runs past :data:`MAX_MESSAGE` characters (the
    engine's messages follow the fault with diagnostics, e.g. the tokenized prompt)."""
    parts = NEXT_SENTENCE.split(text, maxsplit=1)
    return parts[0].rstrip(":;") if len(text) > MAX_MESSAGE else text


def shown(err: BaseException, action: str) -> Shown:
    """The page's message for ``err``, raised while doing ``action`` (e.g. "The run")."""
    if isinstance(err, MllmLensError):
        details = getattr(err, "details", "") or f"{type(err).__name__}: {scrub(str(err))}"
        return Shown(sentence(first_sentence(str(err))), details)
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return Shown(f"{action} failed unexpectedly; the details below say where.", scrub(trace)[-MAX_DETAILS:])
