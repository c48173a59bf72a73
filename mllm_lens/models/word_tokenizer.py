"""Word-level tokenizers built offline with the ``tokenizers`` library (tiny and demo models)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def word_level_tokenizer(
    words: list[str] | tuple[str, ...], named: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """One token per word (split on whitespace and punctuation), BOS added like LLaMA's,
    ``<image>`` registered as the image token, ``named`` as further named special tokens (e.g.
    ``{"start_image_token": "<img>"}``). Ids: specials first, then ``named``, then ``words`` in order."""
    named = named or {}
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *named.values()])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", **named},
    )
