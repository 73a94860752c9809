"""Word-level tokenizers for the tiny presets, built offline with the `tokenizers` library.

Real checkpoints bring their own tokenizer through AutoProcessor; the tiny presets are built
from config and have none, so they get one of these: the bundled datasets' closed vocabulary
(bench.data.vocabulary) plus special tokens, wrapped as a real transformers fast tokenizer.
`tiny_tokenizer` serves CLIP, BLIP-2 and LLaVA; `word_level` builds the chat families' (bench/models/chat.py),
whose special tokens are their real checkpoints' (<|im_start|>, <end_of_utterance>, ...).
"""

from __future__ import annotations

from functools import lru_cache

from bench.data.vocabulary import WORDS

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")


def vocabulary(specials: tuple[str, ...], words: tuple[str, ...]) -> tuple[str, ...]:
    """Token by id: the special tokens first, then the words that are not one of them, each once."""
    return specials + tuple(dict.fromkeys(w for w in words if w not in specials))


# The tokenizer's size and special ids, counted the way tiny_tokenizer() builds its vocabulary, so the families'
# PRESETS stay plain data without loading `tokenizers` (the family tests check they agree with tiny_tokenizer()).
TINY_VOCAB_SIZE = len(vocabulary(SPECIAL_TOKENS, WORDS))
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<s>", "</s>", "<image>"))
TINY_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}  # a text config's special ids


@lru_cache(maxsize=1)
def tiny_tokenizer():
    return word_level(SPECIAL_TOKENS, WORDS, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                      extra_special_tokens={"image_token": "<image>"})


def word_level(specials: tuple[str, ...], words: tuple[str, ...], **named):
    """A PreTrainedTokenizerFast over vocabulary(specials, words): lower-cased, split on whitespace and punctuation,
    every special token matched whole before splitting; `named` are its pad/unk/bos/eos/extra special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(specials, words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    backend.add_special_tokens(list(specials))  # a chat template's markers are whole tokens, never split
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="right", **named)


def tiny_vocab_size() -> int:
    return len(tiny_tokenizer())
