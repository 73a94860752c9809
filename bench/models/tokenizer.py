"""A word-level tokenizer for the tiny presets, built offline with the `tokenizers` library.

Real checkpoints bring their own tokenizer through AutoProcessor; the tiny presets are built
from config and have none, so they get this one: the bundled datasets' closed vocabulary
(bench.data.vocabulary) plus special tokens, wrapped as a real transformers fast tokenizer.
"""

from __future__ import annotations

from functools import lru_cache

from bench.data.vocabulary import WORDS

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")

# The tokenizer's size and special ids, counted the way tiny_tokenizer() builds its vocabulary, so the families'
# PRESETS stay plain data without loading `tokenizers` (the family tests check they agree with tiny_tokenizer()).
TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + sum(w not in SPECIAL_TOKENS for w in WORDS)
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<s>", "</s>", "<image>"))
TINY_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}  # a text config's special ids


@lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

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
