"""CLIP text tokenisation.

The byte-level BPE itself is done by ``transformers.CLIPTokenizer`` (backed by the Rust
``tokenizers`` library, so batches are fast); this module only builds it from the vendored
OpenAI vocabulary (no hub, no files written) and reproduces OpenAI's ``clip.tokenize`` framing:
``[<|startoftext|>] + bpe + [<|endoftext|>]``, zero padded to ``context_length``.

    ids = tokenize(["a photo of a cat", "a dog"])    # (2, 77) int32
    detokenize(ids)                                  # ['a photo of a cat', 'a dog']

Ids equal open_clip's ``tokenize`` (tests/test_tokenizer.py). The transformers tokenizer that
clipjax exports beside a model (``clip_tokenizer()``, OpenAI's vocabulary files) differs from
``tokenize`` in two ways a user may notice: it skips OpenAI's ftfy fixing and HTML unescaping
("Tom &amp; Jerry" keeps "&amp;"; ``tokenize(..., clean="none")`` does the same), and it maps
"<|startoftext|>" / "<|endoftext|>" typed inside a text to the special ids 49406 / 49407, as
OpenAI's own tokenizer does, where open_clip and clipjax read them as text.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
from collections.abc import Sequence

import numpy as np

BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "bpe_simple_vocab_16e6.txt.gz")
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
# OpenAI keeps the first 49152 - 256 - 2 merges (vocab = 2*256 byte tokens + merges + 2 specials).
NUM_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode char table of GPT-2/CLIP byte-level BPE (OpenAI's order matters:
    it fixes the ids of the first 512 vocabulary entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values, code_points = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, map(chr, code_points)))


@functools.lru_cache(maxsize=None)
def bpe_merges() -> tuple[tuple[str, str], ...]:
    """The merge rules in rank order (line 0 of the file is a version header)."""
    with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])


@functools.lru_cache(maxsize=None)
def bpe_vocab(specials: tuple[str, str] = (SOT_TOKEN, EOT_TOKEN)) -> dict[str, int]:
    """token -> id, built exactly like OpenAI's SimpleTokenizer.encoder (49408 entries); the two
    special tokens (ids 49406, 49407) under the names `specials`."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in bpe_merges()]
    tokens += list(specials)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE and vocab[specials[0]] == SOT_ID and vocab[specials[1]] == EOT_ID
    return vocab


# open_clip's SimpleTokenizer names its special tokens "<start_of_text>" / "<end_of_text>" and
# maps only those strings, typed in a text, to ids 49406 / 49407; "<|startoftext|>" typed in a
# text is ordinary text there (OpenAI's own tokenizer and transformers' map it to 49406).
# clipjax encodes as open_clip does; the exported transformers tokenizer keeps OpenAI's names.
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")


@functools.lru_cache(maxsize=None)
def _encoding_tokenizer():
    from transformers import CLIPTokenizer

    sot, eot = OPEN_CLIP_SPECIALS
    return CLIPTokenizer(vocab=dict(bpe_vocab(OPEN_CLIP_SPECIALS)), merges=list(bpe_merges()),
                         bos_token=sot, eos_token=eot, unk_token=eot, pad_token=eot)


@functools.lru_cache(maxsize=None)
def clip_tokenizer():
    """A ``transformers.CLIPTokenizer`` built in memory from the vendored OpenAI BPE files, with
    OpenAI's special-token names: what clipjax exports beside a transformers model. (clipjax
    itself encodes with open_clip's names, see OPEN_CLIP_SPECIALS.)

    Cached: treat it as read-only (its ``tokenizers`` backend is thread-safe for encoding).
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(bpe_vocab()), merges=list(bpe_merges()))


def openai_clean(text: str) -> str:
    """OpenAI's ``basic_clean`` + ``whitespace_clean`` + ``lower()``: the cleaning CLIP / open_clip
    models saw in training.

    Lower-casing here too (the tokenizer's normaliser lower-cases again, harmlessly) because
    Python's ``str.lower`` is context-aware (final sigma: "ΟΔΟΣ" -> "οδος") while the Rust
    normaliser maps char by char ("οδοσ"), and OpenAI's ids come from ``str.lower``."""
    import ftfy
    import regex

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    # The `regex` module's \s, as OpenAI uses (not `re`'s), so edge-case whitespace matches theirs.
    return regex.sub(r"\s+", " ", text).strip().lower()


_CLEANERS = {"openai": openai_clean, "none": None}


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be str or a sequence of str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def encode_bpe(texts: str | Sequence[str], clean: str = "openai") -> list[list[int]]:
    """BPE ids for each text, without start/end tokens and without truncation."""
    if clean not in _CLEANERS:
        raise ValueError(f"clean must be one of {sorted(_CLEANERS)}, got {clean!r}")
    texts = _as_list(texts)
    cleaner = _CLEANERS[clean]
    if cleaner is not None:
        texts = [cleaner(t) for t in texts]
    backend = _encoding_tokenizer().backend_tokenizer
    return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]


def tokenize(
    texts: str | Sequence[str],
    context_length: int = 77,
    truncate: bool = True,
    clean: str = "openai",
) -> np.ndarray:
    """(N, context_length) int32 ids as OpenAI's ``clip.tokenize`` gives them.

    Each row is ``[49406] + bpe + [49407]`` followed by zeros. Rows longer than
    ``context_length`` are cut with their last id set back to 49407 when ``truncate`` (the
    default, as open_clip does); otherwise a ValueError names the offending text.
    ``clean="openai"`` applies OpenAI's ftfy/html/whitespace cleaning first; ``clean="none"``
    leaves only the tokenizer's own normaliser (NFC, whitespace, lower case).
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 to hold the start and end tokens, got {context_length}")
    texts = _as_list(texts)
    out = np.zeros((len(texts), context_length), dtype=np.int32)
    for i, ids in enumerate(encode_bpe(texts, clean=clean)):
        row = [SOT_ID, *ids, EOT_ID]
        if len(row) > context_length:
            if not truncate:
                raise ValueError(
                    f"Text {i} is {len(row)} tokens long, more than context_length={context_length} "
                    f"(pass truncate=True to cut it): {texts[i][:80]!r}"
                )
            row = row[:context_length]
            row[-1] = EOT_ID
        out[i, : len(row)] = row
    return out


def detokenize(ids) -> list[str]:
    """Text for each row of ids: start token dropped, stopped at the first end token.

    Id 0 is a real token ("!"), so padding is recognised by position (after the end token),
    not by value.
    """
    rows = np.asarray(ids)
    if rows.ndim == 1:
        rows = rows[None]
    tok = clip_tokenizer()
    texts = []
    for row in rows.tolist():
        if row and row[0] == SOT_ID:
            row = row[1:]
        if EOT_ID in row:
            row = row[: row.index(EOT_ID)]
        texts.append(tok.decode(row, skip_special_tokens=True).strip())
    return texts


def bert_tokenize(texts: str | Sequence[str], tokenizer, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both (N, max_length) int32, from a transformers
    BERT/DistilBERT-style tokenizer: special tokens added, truncated and padded to max_length."""
    enc = tokenizer(
        _as_list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


__all__ = [
    "tokenize", "detokenize", "clip_tokenizer", "encode_bpe", "openai_clean", "bert_tokenize",
    "bpe_vocab", "bpe_merges", "SOT_ID", "EOT_ID", "VOCAB_SIZE",
]


# ---------------------------------------------------------------------------------------------
# One callable per text tower: strings -> int32 ids, whatever the tokenizer
# ---------------------------------------------------------------------------------------------


def wordpiece_tokenizer(path: str | os.PathLike, lowercase: bool = True):
    """transformers' BertTokenizer (WordPiece in the Rust `tokenizers` library) from local
    files: a saved transformers tokenizer directory (tokenizer.json / tokenizer_config.json),
    a directory holding only a vocab.txt, or a vocab.txt file. Never touches the hub."""
    from transformers import AutoTokenizer, BertTokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        path = os.path.join(path, "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WordPiece vocabulary {path!r} does not exist (give a vocab.txt or a saved "
                                "transformers tokenizer directory)")
    # transformers 5 takes the vocabulary as `vocab=` (a `vocab_file=` keyword is ignored)
    return BertTokenizer(vocab=path, do_lower_case=lowercase)


def make_text_tokenizer(text_cfg, tokenizer_path: str | os.PathLike | None = None):
    """`texts -> (N, context_length) int32 ids` for a text tower config.

    causal (CLIP): OpenAI's BPE framing (`tokenize`). bert / distilbert: WordPiece from
    `tokenizer_path` ([CLS] text [SEP], padded with the vocabulary's [PAD] and truncated to
    context_length); the towers' padding mask is `ids != text_cfg.pad_token_id`, so the pad id
    of the vocabulary must match the config (checked here)."""
    length = int(text_cfg.context_length)
    if text_cfg.kind == "causal":
        return lambda texts: tokenize(texts, context_length=length)
    if not tokenizer_path:
        raise ValueError(f"a {text_cfg.kind} text tower needs a WordPiece tokenizer: set the tokenizer path "
                         "(config.data.tokenizer: a vocab.txt or a saved transformers tokenizer directory)")
    tok = wordpiece_tokenizer(tokenizer_path)
    if tok.pad_token_id != text_cfg.pad_token_id:
        raise ValueError(f"tokenizer {tokenizer_path}: [PAD] id {tok.pad_token_id} != model pad_token_id "
                         f"{text_cfg.pad_token_id}")
    if len(tok) > text_cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {len(tok)} tokens, the model's vocab_size is "
                         f"{text_cfg.vocab_size}")

    def encode(texts):
        enc = tok(_as_list(texts), padding="max_length", truncation=True, max_length=length,
                  return_attention_mask=False, return_token_type_ids=False)
        return np.asarray(enc["input_ids"], np.int32).reshape(-1, length)

    return encode


def text_attention_mask(text_cfg, ids):
    """Padding mask for bidirectional (BERT-family) towers, None for causal CLIP towers
    (which pool at the end token and never look past it)."""
    if text_cfg.kind == "causal":
        return None
    return (ids != text_cfg.pad_token_id).astype(ids.dtype)


# ---------------------------------------------------------------------------- Tag2Text / RAM
DEC, ENC = "[DEC]", "[ENC]"  # BLIP's decoder-start and tag-encoder tokens


class TagTextTokenizer:
    """Strings -> the tag-encoder / caption-decoder ids of Tag2Text and RAM."""

    def __init__(self, vocab_path: str, prompt: str, tag_max_length: int = 40, caption_max_length: int = 40):
        tok = wordpiece_tokenizer(vocab_path)
        # BLIP's init_tokenizer: bos [DEC] and [ENC] appended after the vocabulary's tokens
        # (ids 30522 / 30523 for bert-base-uncased); a vocab.txt that has them keeps its ids
        tok.add_special_tokens({"bos_token": DEC, "additional_special_tokens": [ENC]})
        self.tok = tok
        self.prompt = prompt
        self.tag_max_length, self.caption_max_length = tag_max_length, caption_max_length
        self.bos_id = tok.convert_tokens_to_ids(DEC)
        self.enc_id = tok.convert_tokens_to_ids(ENC)
        self.sep_id, self.pad_id = tok.sep_token_id, tok.pad_token_id
        # [DEC] + the prompt's tokens (the release: len(tokenizer(prompt).input_ids) - 1)
        self.prompt_length = len(tok(prompt).input_ids) - 1

    def __len__(self):
        return len(self.tok)

    def _ids(self, texts, length, first):
        enc = self.tok(list(texts), padding="max_length", truncation=True, max_length=length,
                       return_attention_mask=False, return_token_type_ids=False)
        ids = np.asarray(enc["input_ids"], np.int32).reshape(-1, length)
        ids[:, 0] = first
        return ids

    def tags(self, tag_strings: Sequence[str]) -> np.ndarray:
        return self._ids(tag_strings, self.tag_max_length, self.enc_id)

    def texts(self, captions: Sequence[str]) -> np.ndarray:
        """[CLS] + caption (no prompt): the text encoder's input for ITC / ITM."""
        return self._ids(captions, self.caption_max_length, self.tok.cls_token_id)

    def captions(self, captions: Sequence[str]) -> np.ndarray:
        return self._ids([self.prompt + c for c in captions], self.caption_max_length, self.bos_id)

    def prompt_ids(self, batch: int) -> np.ndarray:
        """[DEC] + prompt tokens (no [SEP]): the generation prefix."""
        ids = np.asarray(self.tok(self.prompt).input_ids[:-1], np.int32)
        ids[0] = self.bos_id
        return np.tile(ids, (batch, 1))

    def decode(self, ids) -> list[str]:
        """Generated ids -> captions with the prompt removed (the release strips it by length)."""
        out = []
        for row in np.asarray(ids):
            text = self.tok.decode(row, skip_special_tokens=True)
            p = self.prompt.strip()
            out.append(text[len(p):].strip() if text.startswith(p) else text.strip())
        return out


def tag_strings(multi_hot, tag_names: Sequence[str], sep: str = " | ") -> list[str]:
    hot = np.asarray(multi_hot)
    return [sep.join(tag_names[i] for i in np.flatnonzero(row)) for row in hot]
