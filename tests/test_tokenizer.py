"""clipjax.tokenizer against three references, string by string:

* the default == open_clip's ``tokenize`` on every string, the special-token literals included
  ("<|startoftext|>" typed in a text is ordinary text; open_clip's own "<start_of_text>" is 49406);
* clean="none"  == transformers' CLIPTokenizer called the ordinary way (``tok(texts)``), except
  for texts holding OpenAI's special-token literals, which transformers maps to 49406 / 49407;
* clean="openai" == OpenAI's own ``SimpleTokenizer`` (clip-anytorch's file, loaded by path since
  ``import clip`` needs torchvision) framed like ``clip.tokenize``, with the same exception.
"""

import importlib.util
import os
import random
import sysconfig

import numpy as np
import pytest

from clipjax.tokenizer import EOT_ID, SOT_ID, bert_tokenize, clip_tokenizer, detokenize, tokenize

CTX = 77

# OpenAI's regex lets a run of punctuation swallow the "<|" of a special token written in the text
# ("x!<|endoftext|>" -> "!<|", "endoftext", "|>"): strings where even OpenAI's special handling
# is not what transformers does.
SPECIAL_AFTER_PUNCT = ["x!<|endoftext|>", "(<|startoftext|>)", "wow...<|endoftext|>!!"]
# Not in the corpus, also known to differ: unassigned / newly assigned code points (e.g. U+0CDC,
# U+208F), whose letter-or-not class differs between the Unicode tables of the `regex` module and of
# the Rust regex in `tokenizers`, so the pre-tokeniser splits them differently.


def _sentences(rng: random.Random) -> list[str]:
    words = (
        "a photo of the cat dog running on beach at night sunny red BLUE Tree house car "
        "don't it's we're they've I'm you'll he'd CLIP model's embeddings zero-shot"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(200)]


def _unicode(rng: random.Random) -> list[str]:
    pieces = [
        "café", "naïve", "Crème brûlée", "façade", "Ærøskøbing", "straße", "İstanbul", "ΟΔΟΣ", "σοφία",
        "Привет мир", "日本語のテキスト", "中文字符", "한국어", "مرحبا", "שלום", "हिन्दी", "ไทย",
        "🐱", "👍🏽", "👨‍👩‍👧", "🇫🇷", "✨🔥💯", "e\u0301", "A\u030a", "ﬁ ligature", "ＦＵＬＬＷＩＤＴＨ", "①②③",
        "x²", "½", "№", "™", "—", "…", "«quoted»", "“smart quotes”", "\u00a0nbsp\u00a0", "\u200bzwsp",
    ]
    out = list(pieces)
    for _ in range(150):
        out.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(2, 6))))
    return out


def _edge_cases(rng: random.Random) -> list[str]:
    out = [
        "", " ", "   ", "\t", "\n", "\t\n \r", "a", "A", "!", "?!?!", "...", "!!!???;;;:::", "((([[[{{{",
        "0", "123", "3.14159", "1,000,000", "2024-01-01", "v1.2.3", "#hashtag", "@user", "a+b=c",
        "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "AT&T", "Tom &amp; Jerry", "&#39;quoted&#39;", "&nbsp;x",
        "MiXeD CaSe", "UPPER CASE", "tab\tseparated\twords", "new\nline\nwords", "  padded  ",
        "don't", "DON'T", "won't can't shouldn't", "it's", "IT'S", "'s", "rock 'n' roll",
        "<|endoftext|>", "<|startoftext|>", "a <|endoftext|> b", "<|startoftext|>hi<|endoftext|>",
        "hello<|endoftext|>", "<|ENDOFTEXT|>", "<|endoftext", "|endoftext|>",
        "https://example.com/path?q=1&r=2", "user@example.com", "C++ / C# / F#", "snake_case_name",
        "ï»¿bom-mojibake", "The Mona Lisa â€” by Leonardo", "\\backslash\\", "\"double\"", "`code`",
        "\u0000nul", "\x07bell", "\u2028line-sep", "\u3000ideographic space",
    ]
    long_ascii = " ".join(f"word{i}" for i in range(120))
    out += [long_ascii, "a " * 200, "🐱" * 100, "supercalifragilistic" * 20, "x" * 500]
    out += ["".join(rng.choice("abc !?.,'\t\n0123&;") for _ in range(rng.randint(1, 60))) for _ in range(60)]
    return out


def _corpus() -> list[str]:
    rng = random.Random(0)
    return _sentences(rng) + _unicode(rng) + _edge_cases(rng) + SPECIAL_AFTER_PUNCT


TEXTS = _corpus()


@pytest.fixture(scope="module")
def openai_tokenizer():
    """OpenAI's SimpleTokenizer from clip-anytorch, loaded by file path."""
    path = os.path.join(sysconfig.get_paths()["purelib"], "clip", "simple_tokenizer.py")
    if not os.path.exists(path):
        pytest.skip("clip-anytorch (reference tokenizer) not installed")
    spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def _frame(token_lists, context_length=CTX):
    """clip.tokenize's framing (clip/clip.py): truncate keeps the first context_length ids and sets
    the last to end-of-text; rows are zero padded."""
    out = np.zeros((len(token_lists), context_length), dtype=np.int64)
    for i, tokens in enumerate(token_lists):
        tokens = list(tokens)
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = EOT_ID
        out[i, : len(tokens)] = tokens
    return out


def _openai_ids(ref, texts, context_length=CTX):
    return _frame([[SOT_ID] + ref.encode(t) + [EOT_ID] for t in texts], context_length)


def _mismatches(ours, ref, texts):
    return [(i, texts[i]) for i in range(len(texts)) if not np.array_equal(ours[i], ref[i])]


def test_corpus_is_varied():
    assert len(TEXTS) > 400
    assert any(len(tokenize(t, truncate=True)[0].nonzero()[0]) == CTX for t in TEXTS)


def _has_openai_special(text: str) -> bool:
    low = text.lower()
    return "<|startoftext|>" in low or "<|endoftext|>" in low


def test_matches_open_clip_tokenizer():
    from torchvision_stub import import_open_clip

    open_clip = import_open_clip()
    texts = TEXTS + ["a <start_of_text> b", "x <END_OF_TEXT>", "<start_of_text>"]
    ref = open_clip.tokenize(texts).numpy()
    ours = tokenize(texts)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), CTX)
    assert _mismatches(ours, ref, texts) == []


def test_matches_transformers_clip_tokenizer():
    texts = [t for t in TEXTS if not _has_openai_special(t)]
    hf = _frame(clip_tokenizer()(texts)["input_ids"])
    assert _mismatches(tokenize(texts, clean="none"), hf, texts) == []


def test_matches_openai_simple_tokenizer(openai_tokenizer):
    texts = [t for t in TEXTS if not _has_openai_special(t)]
    ref = _openai_ids(openai_tokenizer, texts)
    ours = tokenize(texts)  # clean="openai" is the default
    assert _mismatches(ours, ref, texts) == []


def test_known_disagreements(openai_tokenizer):
    """Pin down where the references differ, so a change is noticed: OpenAI's tokenizer and
    transformers' (clipjax's export) map "<|endoftext|>" typed in a text to the special id;
    clipjax, as open_clip, reads it as text."""
    texts = ["a <|endoftext|> b", "<|startoftext|>hi"]
    ours = tokenize(texts)
    hf = _frame(clip_tokenizer()(texts)["input_ids"])
    ref = _openai_ids(openai_tokenizer, texts)
    for i in range(len(texts)):
        assert not np.array_equal(ours[i], ref[i]) and not np.array_equal(ours[i], hf[i])
        assert not set(ours[i][1:].tolist()) & {SOT_ID} and ours[i].tolist().count(EOT_ID) == 1


def test_cleaning_differs_where_expected():
    """html entities are only unescaped by OpenAI's cleaning, so the two modes differ there."""
    assert not np.array_equal(tokenize("Tom &amp; Jerry"), tokenize("Tom &amp; Jerry", clean="none"))
    np.testing.assert_array_equal(tokenize("Tom &amp; Jerry"), tokenize("Tom & Jerry", clean="none"))


def test_empty_string():
    ids = tokenize("")
    assert ids.shape == (1, CTX)
    assert ids[0, :2].tolist() == [SOT_ID, EOT_ID] and not ids[0, 2:].any()


def test_truncation():
    ids = tokenize("a " * 200)
    assert ids.shape == (1, CTX)
    assert ids[0, 0] == SOT_ID and ids[0, -1] == EOT_ID
    assert (ids[0, 1:-1] == tokenize("a")[0, 1]).all()


def test_context_length():
    ids = tokenize(["a photo of a cat", "x " * 50], context_length=16)
    assert ids.shape == (2, 16)
    assert ids[0, :7].tolist() == [SOT_ID, 320, 1125, 539, 320, 2368, EOT_ID] and not ids[0, 7:].any()
    assert ids[1, -1] == EOT_ID and ids[1].all()
    # exactly fitting rows are not cut
    assert tokenize("a photo", context_length=4)[0].tolist() == [SOT_ID, 320, 1125, EOT_ID]


def test_too_long_without_truncate_raises():
    with pytest.raises(ValueError, match="Text 1 "):
        tokenize(["short", "a " * 100], truncate=False)
    tokenize("a " * 75, truncate=False)  # 77 tokens exactly: fine


def test_bad_arguments():
    with pytest.raises(ValueError, match="clean"):
        tokenize("x", clean="ftfy")
    with pytest.raises(TypeError):
        tokenize(["ok", 3])


def test_detokenize(openai_tokenizer):
    texts = ["a photo of a cat", "", "hello world!", "!", "Crème brûlée 🐱", "a " * 100]
    ids = tokenize(texts)
    # CLIP's BPE marks word ends, not spaces, so "world!" comes back as "world !" (as OpenAI's decode)
    ends = [int(np.argmax(row == EOT_ID)) for row in ids]
    expected = [openai_tokenizer.decode(row[1:end].tolist()).strip() for row, end in zip(ids, ends)]
    assert detokenize(ids) == expected
    assert expected[:4] == ["a photo of a cat", "", "hello world !", "!"]
    assert detokenize(tokenize("a photo")[0]) == ["a photo"]


def test_bert_tokenize():
    class FakeBert:  # the transformers tokenizer call signature, no vocab download needed
        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            assert (padding, truncation, return_tensors) == ("max_length", True, "np")
            ids = np.zeros((len(texts), max_length), np.int64)
            mask = np.zeros_like(ids)
            for i, t in enumerate(texts):
                n = min(len(t.split()) + 2, max_length)
                ids[i, :n], mask[i, :n] = 7, 1
            return {"input_ids": ids, "attention_mask": mask}

    ids, mask = bert_tokenize(["a b c", "a " * 40], FakeBert(), 8)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [5, 8]
