"""A word-level tokenizer for the tiny presets, built offline with the `tokenizers` library.

Real checkpoints bring their own tokenizer through AutoProcessor; the tiny presets are built
from config and have none, so they get this one: the bundled datasets' closed vocabulary
(bench.data.vocabulary) plus special tokens, wrapped as a real transformers fast tokenizer.
"""

from __future__ import annotations

from functools import lru_cache

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")


@lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bench.data.vocabulary import WORDS

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + tuple(w for w in WORDS if w not in SPECIAL_TOKENS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def tiny_vocab_size() -> int:
    return len(tiny_tokenizer())
