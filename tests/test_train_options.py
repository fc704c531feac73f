"""Train-step options: the ring loss and GradCache accumulation change memory, not results;
LiT-style init_from + freezing keeps the pretrained image tower exactly."""

import os

import jax
import numpy as np

import clipjax
from clipjax.convert.formats import load_clipjax
from clipjax.tasks import train
from test_train_smoke import _config


def _tiny(total_steps=2, **kw):
    c = _config(total_steps)
    c.eval_every = 0
    c.checkpoint_every = 100
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _params(wd):
    return load_clipjax(os.path.join(wd, "checkpoints"))[1]["params"]


def test_ring_loss_and_grad_cache_match_global(tmp_path):
    ref = _params_after(tmp_path / "global", loss_impl="global", accum_steps=1)
    for name, impl, accum in (("ring", "ring", 1), ("cache", "global", 4), ("ring_cache", "ring", 2)):
        got = _params_after(tmp_path / name, loss_impl=impl, accum_steps=accum)
        err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)))
        print(f"\n{name}: max |param diff| after 2 AdamW steps vs global logits: {err:.2e}")
        assert err <= 1e-5, (name, err)


def _params_after(wd, **kw):
    train(_tiny(**kw), str(wd))
    return _params(str(wd))


def test_lit_init_from_and_freeze(tmp_path):
    src = str(tmp_path / "pretrained")
    train(_tiny(total_steps=2), src)  # stands in for a pretrained CLIP (any format load() reads)
    pre = _params(src)
    c = _tiny(total_steps=3, init_from=src)
    c.init_parts = ["visual"]
    c.optimizer.freeze = ["^visual/"]
    c.seed = 7  # a different init: only the image tower comes from the checkpoint
    wd = str(tmp_path / "lit")
    train(c, wd)
    got = _params(wd)
    for a, b in zip(jax.tree_util.tree_leaves(pre["visual"]), jax.tree_util.tree_leaves(got["visual"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # locked: bitwise unchanged
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree_util.tree_leaves(pre["text"]), jax.tree_util.tree_leaves(got["text"]))]
    assert max(moved) > 0  # the text tower was not taken from it, and it trains
    assert clipjax.load(wd).encode_text(["a red circle"]).shape == (1, 32)


def test_init_parts_without_init_from_is_an_error(tmp_path):
    import pytest

    c = _tiny()
    c.init_parts = ["visual"]
    with pytest.raises(ValueError, match="init_from is empty"):
        train(c, str(tmp_path / "x"))


def test_bad_config_is_named_before_anything_runs(tmp_path):
    import pytest

    c = _tiny()
    c.loss = "hinge"
    c.log_every = 0
    c.accum_steps = 3
    with pytest.raises(ValueError) as e:
        train(c, str(tmp_path / "x"))
    msg = str(e.value)
    assert "loss must be" in msg and "log_every" in msg and "accum_steps=3" in msg
    assert not os.path.exists(tmp_path / "x")  # nothing written
