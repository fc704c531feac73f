"""A CLIP with a BERT text tower trains from the tf.data pipeline: captions are tokenised with
WordPiece (transformers' BertTokenizerFast on a local vocab.txt) and padded with [PAD], which
the tower masks out."""

import numpy as np
import pytest

from clipjax.data import shapes_dataset as sd
from clipjax.tokenizer import make_text_tokenizer, text_attention_mask
from test_train_smoke import _config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab_file(tmp_path):
    words = set(sd.COLOR_NAMES + sd.SHAPES + sd.SIZES + sd.TEXTURES + sd.BACKGROUNDS)
    words |= {"a", "the", "on", "at", "in", "of", "and", "photo", "picture", "shape", "shapes", "background",
              "left", "right", "top", "bottom", "center", "one", "two", "three", ":", ","}
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SPECIALS + sorted(words)) + "\n")
    return path, len(SPECIALS) + len(words)


def _bert_config(tmp_path):
    vocab, n = _vocab_file(tmp_path)
    c = _config(total_steps=2)
    c.model.text.update(kind="bert", vocab_size=n, context_length=16, width=32, layers=1, heads=2, mlp_dim=64,
                        act="gelu", ln_eps=1e-12, pool="cls", pad_token_id=0, eos_token_id=None)
    c.data.tokenizer = str(vocab)
    c.eval_every = 2
    c.checkpoint_every = 100
    return c


def test_wordpiece_tokenizer_frames_and_pads(tmp_path):
    c = _bert_config(tmp_path)
    from clipjax.tasks.clip import model_config

    cfg = model_config(c).text
    tok = make_text_tokenizer(cfg, c.data.tokenizer)
    ids = tok(["a small red circle on the left", "two shapes on a noise background: a red circle and a " * 4])
    assert ids.shape == (2, 16) and ids.dtype == np.int32
    assert ids[0, 0] == 2 and 3 in ids[0] and ids[0, -1] == 0  # [CLS] ... [SEP] [PAD]...
    assert ids[1, -1] == 3 and 0 not in ids[1]  # truncated, still ends with [SEP]
    assert 1 not in ids  # every word is in the vocabulary: no [UNK]
    mask = text_attention_mask(cfg, ids)
    np.testing.assert_array_equal(mask, ids != 0)
    with pytest.raises(ValueError, match="WordPiece tokenizer"):
        make_text_tokenizer(cfg, "")


def test_bert_text_tower_trains_on_shapes(tmp_path):
    from clipjax.tasks import train

    final = train(_bert_config(tmp_path), str(tmp_path / "run"))
    assert np.isfinite(final["loss"]) and 0.0 <= final["zeroshot_top1"] <= 1.0
