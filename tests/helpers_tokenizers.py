"""Tiny tokenizers built in code, for tests that must not depend on shared data or the Hub.

Import from a test module as ``from helpers_tokenizers import build_wordpiece_tokenizer`` (pytest's default
``prepend`` import mode puts ``tests/`` on ``sys.path`` because it has no ``__init__.py``).

Three families, mirroring real models:

- `build_wordpiece_tokenizer`: BERT-like (``[CLS] … [SEP]``, ``[MASK]``, ``token_type_ids``).
- `build_sentencepiece_tokenizer`: XLM-R-like Unigram + Metaspace (``<s> … </s>``, ``<mask>`` with ``lstrip``).
- `build_byte_bpe_tokenizer`: GPT-2-like byte-level BPE, pad token = EOS, no BOS added.

Each knows the words in `WORDS`; ``"Florence"`` / ``"Rome"`` deliberately split into two pieces.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = (
    "Dante", "was", "born", "in", "Paris", "Berlin", "Madrid", "Lyon", "the", "capital", "of", "is", "France",
    "Italy", "Germany", "Spain", "Goethe", "Picasso", "est", "né", "à", "la", "de", "ist", "geboren", "die",
    "Hauptstadt", "von", "a", "man", "woman", "sleeps", "runs", "dog", "cat", "Le", "chat", "dort", "Der", "Hund",
    "läuft", ".", ",",
)  # fmt: skip
SPLIT_WORDS = {"Florence": ("Flo", "rence"), "Rome": ("Ro", "me")}


def build_wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-like WordPiece tokenizer with `WORDS` (+ ``Flo ##rence``, ``Ro ##me``)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(WORDS) + [p for a, b in SPLIT_WORDS.values() for p in (a, "##" + b)]
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """An XLM-R-like Unigram tokenizer: word-initial pieces carry ``▁``; ``<mask>`` strips the space before it."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(t, 0.0) for t in specials] + [("▁", -5.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS]
    pieces += [(p, -2.0) for a, b in SPLIT_WORDS.values() for p in ("▁" + a, b)]
    pieces += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
    )


def _merge_chain(word: str) -> list[tuple[str, str]]:
    return [(word[:i], word[i]) for i in range(1, len(word))]


def build_byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-like byte-level BPE tokenizer with merges for ``" " + w`` for each of `WORDS` (pad = EOS)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = ["Ġ" + w for w in WORDS] + [w for w in WORDS] + ["ĠRo", "me", "ĠFlo", "rence"]
    merges: list[tuple[str, str]] = []
    for word in words:
        # Apply the byte-level mapping to non-ASCII characters (e.g. "né" -> "nÃ©").
        mapped = "".join(piece for piece, _ in byte_level.pre_tokenize_str(word.replace("Ġ", " ")))
        merges += [m for m in _merge_chain(mapped) if m not in merges]
    vocab = {token: i for i, token in enumerate(["<|endoftext|>"] + alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
