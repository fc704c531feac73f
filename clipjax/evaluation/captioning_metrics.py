"""Caption metrics: BLEU-1..4 and CIDEr-D through the reference COCO implementation
(``pycocoevalcap`` 1.2: ``Bleu(4)`` with the "closest" reference length, and ``Cider``, which
is CIDEr-D -- clipped n-gram counts, Gaussian length penalty sigma=6, x10 scale).

Captions are tokenised by :func:`coco_tokenize`, a pure-Python stand-in for the COCO toolkit's
``PTBTokenizer`` (Stanford CoreNLP 3.4.1 via Java, ``-preserveLines -lowerCase``, then dropping
the tokens in its ``PUNCTUATIONS`` list). For plain English captions it yields the same tokens:

* lower-cases; normalises curly quotes / apostrophes to ASCII;
* splits punctuation off words and drops ``. , ? ! : ; ' " ` - -- ...`` as standalone tokens,
  and parentheses / braces (which PTB turns into ``-LRB-`` etc. and COCO then drops);
* keeps word-internal ``- ' . , / &`` ("black-and-white", "o'clock", "3.5", "1,000", "and/or");
* splits clitics as PTB does: ``n't`` ("don't" -> "do n't", "can't" -> "ca n't",
  "won't" -> "wo n't"), ``'s 're 'll 'd 've 'm`` ("man's" -> "man 's"), and "cannot" -> "can not".

Known differences from the Java tokenizer (all rare in captions): abbreviations keep no final
period here ("u.s." -> "u.s", "mr." -> "mr"; PTB keeps "u.s." / "mr."); square brackets are
dropped here (PTB emits bracket tokens such as -LSB- that COCO's list does not remove); other
symbols (``$ % # & + = @ * / < >``) become their own tokens, where PTB's finer rules (money,
fractions, URLs, e-mail addresses, SGML, "gonna"-style splits) may differ.

Scores are corpus-level: BLEU pools n-gram counts over all images, and CIDEr's IDF weights come
from the reference captions of *all* images passed in (IDF = log(num_images / document
frequency)). A one-image corpus therefore gives CIDEr 0, and CIDEr values are only comparable
between evaluations on the same reference set.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Hashable, Mapping, Sequence

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS
PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                              ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# Characters whose standalone tokens are dropped (PTB maps brackets / quotes to tokens in the
# list above; '"' becomes `` or '').
_DROP_CHARS = frozenset(".?!,:;'`\"-()[]{}")

_QUOTE_MAP = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": "--", "\u2014": "--", "\u2015": "--", "\u2026": "...",
    "\u00a0": " ",
})

# A word: runs of letters/digits joined by single internal - ' . , / & characters.
# A comma is only internal between digits ("1,000"), otherwise it separates ("red,blue").
_WORD = r"[^\W_]+(?:(?:[-'./&]|(?<=\d),(?=\d))[^\W_]+)*"
# Standalone clitics ("yellow 's") are kept whole, as PTB does.
_TOKEN_RE = re.compile(rf"{_WORD}|'(?:s|re|ll|d|ve|m)(?![^\W_])|n't(?![^\W_])|\.\.\.|--+|\S")
_CLITIC_RE = re.compile(r"^(.+?)('s|'re|'ll|'d|'ve|'m)$")
_NT_SPECIAL = {"can't": ("ca", "n't"), "won't": ("wo", "n't"), "ain't": ("ai", "n't"),
               "shan't": ("sha", "n't")}


def _split_clitics(word: str) -> list[str]:
    if word in _NT_SPECIAL:
        return list(_NT_SPECIAL[word])
    if word == "cannot":
        return ["can", "not"]
    if word.endswith("n't") and len(word) > 3 and "'" not in word[:-3]:
        return [word[:-3], "n't"]
    m = _CLITIC_RE.match(word)
    if m and "'" not in m.group(1):
        return [m.group(1), m.group(2)]
    return [word]


def coco_tokenize(text: str) -> str:
    """Tokenise one caption like COCO's PTBTokenizer + punctuation removal; returns the tokens
    joined by single spaces (the form ``Bleu`` / ``Cider`` expect).

    >>> coco_tokenize("A man, riding a horse.")
    'a man riding a horse'
    """
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    text = text.translate(_QUOTE_MAP).lower()
    out = []
    for tok in _TOKEN_RE.findall(text):
        if tok in PTB_PUNCTUATIONS or (len(tok) == 1 and tok in _DROP_CHARS) or set(tok) <= {"-"}:
            continue
        out.extend(_split_clitics(tok))
    return " ".join(out)


def _validate(predictions: Mapping[Hashable, str],
              references: Mapping[Hashable, Sequence[str]]) -> list:
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise ValueError("predictions and references must be dicts keyed by image id")
    if not predictions:
        raise ValueError("predictions is empty")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"{len(missing)} prediction id(s) have no references, e.g. {missing[:5]}")
    extra = [k for k in references if k not in predictions]
    if extra:
        raise ValueError(f"{len(extra)} reference id(s) have no prediction, e.g. {extra[:5]}")
    ids = list(predictions)
    for k in ids:
        p = predictions[k]
        if not isinstance(p, str):
            raise ValueError(f"prediction for id {k!r} must be a str, got {type(p).__name__}")
        refs = references[k]
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references for id {k!r} must be a list of str, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references for id {k!r} is empty")
        for r in refs:
            if not isinstance(r, str):
                raise ValueError(f"reference for id {k!r} is not a str: {r!r}")
    return ids


def caption_scores(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict:
    """Corpus-level ``{"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "CIDEr"}`` (Python floats) of one
    predicted caption per image against that image's reference captions.

    ``predictions``: image id -> caption; ``references``: image id -> non-empty list of captions.
    The two must have exactly the same ids. Both sides go through :func:`coco_tokenize`.
    Raises ValueError on mismatched ids, an empty reference list, non-string captions, or when no reference has
    any token left after tokenisation.
    """
    ids = _validate(predictions, references)
    res = {k: [coco_tokenize(predictions[k])] for k in ids}
    gts = {k: [coco_tokenize(r) for r in references[k]] for k in ids}
    if not any(r for refs in gts.values() for r in refs):
        raise ValueError("every reference caption is empty after tokenisation")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:  # pragma: no cover
        raise ImportError("caption_scores needs pycocoevalcap (pip install pycocoevalcap)") from e
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU_{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["CIDEr"] = float(cider)
    return out
