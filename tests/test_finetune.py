"""The finetune task and WiSE-FT on a tiny random CLIP: a few training steps move the image
tower and head only and leave a checkpoint clipjax.load reads as a CLIP; WiSE-FT's
interpolation is exactly each end at α = 0 / 1, and evaluate.py --wise-ft at α = 0 is exactly
zero-shot classification (the head starts as the zero-shot classifier)."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

import clipjax
import evaluate
from clipjax.apps.wise_ft import interpolate, parse_alphas

from test_train_smoke import TINY_SHAPES  # the variant other tests prepare: one TFDS build per run
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _config(init_from):
    """configs/finetune_fashion_mnist.py shrunk to two steps on a tiny clipjax_shapes."""
    spec = importlib.util.spec_from_file_location("ft_config", os.path.join(ROOT, "configs", "finetune_fashion_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.init_from = init_from
    c.data.name = "clipjax_shapes"
    c.data.builder_kwargs = TINY_SHAPES
    c.data.shuffle_buffer = 64
    c.update(total_steps=2, batch_size=16, log_every=1, eval_every=2, eval_examples=16, checkpoint_every=2)
    c.optimizer.update(lr=1e-3, warmup_steps=1)
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import flax.linen as nn

    from clipjax.convert.formats import save_clipjax
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset
    from clipjax.tasks import train

    tmp = tmp_path_factory.mktemp("ft")
    cfg = get_preset("tiny-vit")
    # jitted: one compile instead of hundreds of eager ones
    v = nn.unbox(jax.jit(CLIP(cfg).init)(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 77), np.int32)))
    zs = str(tmp / "zs")
    save_clipjax(zs, v, cfg)
    ft = str(tmp / "ft")
    final = train(_config(zs), ft)
    return zs, ft, final


def test_finetune_trains_image_tower_and_head(runs):
    zs, ft, final = runs
    assert np.isfinite(final["loss"]) and 0 <= final["val_top1"] <= 1
    a, b = clipjax.load(zs), clipjax.load(ft)  # the fine-tuned run loads as a CLIP
    pa, pb = jax.device_get(a.variables["params"]), jax.device_get(b.variables["params"])
    assert pb["classifier"].shape == (32, 30)  # (embed, the 30 classes of clipjax_shapes)
    same = jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)), pa["text"], pb["text"])
    assert all(jax.tree_util.tree_leaves(same)) and np.array_equal(pa["logit_scale"], pb["logit_scale"])
    moved = jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)), pa["visual"], pb["visual"])
    assert not all(jax.tree_util.tree_leaves(moved))
    assert b.encode_text(["a red circle"]).shape == (1, 32)


def test_batch_spec_is_the_real_batch(runs):
    from clipjax import sharding as shd
    from clipjax.tasks import finetune

    zs, _, _ = runs
    c = _config(zs)
    mesh = shd.make_mesh(dict(c.mesh))
    task = finetune.make_task(c, mesh, shd.rules_from_config(None), None, abstract=True)
    data = task.make_data(0)
    got = [(tuple(x.shape), np.dtype(x.dtype)) for x in next(data)]
    data.close()
    assert got == [(tuple(s), np.dtype(d)) for s, d in task.batch_spec(c.batch_size)] == [((16, 32, 32, 3), np.float32),
                                                                                          ((16,), np.int32)]


def test_interpolation_endpoints():
    rng = np.random.default_rng(0)
    zs = {"params": {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": rng.normal(size=5).astype(np.float32)}}}
    ft = jax.tree_util.tree_map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), zs)
    for alpha, end in ((0.0, zs), (1.0, ft)):
        eq = jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), interpolate(zs, ft, alpha), end)
        assert all(jax.tree_util.tree_leaves(eq))
    mid = interpolate(zs, ft, 0.25)["params"]["w"]
    np.testing.assert_allclose(mid, 0.75 * zs["params"]["w"] + 0.25 * ft["params"]["w"], rtol=1e-6)
    assert parse_alphas("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("0,x", "1.5", "0,0"):
        with pytest.raises(ValueError):
            parse_alphas(bad)


def test_evaluate_corruption_and_wise_ft(runs, tmp_path, capsys):
    zs, ft, _ = runs
    base = ["--dataset", "clipjax_shapes", "--builder-kwargs", json.dumps(TINY_SHAPES), "--batch-size", "16",
            "--no-progress"]
    z, w = str(tmp_path / "z.json"), str(tmp_path / "w.json")
    assert evaluate.main(base + ["--checkpoint", zs, "--corruption", "blur:0,2", "--output", z]) == 0
    rz = json.load(open(z))
    assert rz["corruption"] == "blur" and rz["levels"] == [0, 2] and os.path.exists(tmp_path / "z_robustness.png")
    assert set(rz["top1"]) == {"dataset", "dataset+degraded"} and all(len(v) == 2 for v in rz["top1"].values())
    assert evaluate.main(base + ["--wise-ft", f"{zs},{ft}", "--alpha", "0,1", "--corruption", "blur:2",
                                 "--output", w]) == 0
    rw = json.load(open(w))
    assert rw["wise_ft_alphas"] == [0.0, 1.0] and set(rw["top1"]) == {"clean", "blur=2"}
    assert os.path.exists(tmp_path / "w_wise_ft.png")
    # alpha 0 is zero-shot classification exactly: the head starts as the zero-shot classifier
    assert rw["top1"]["clean"][0] == pytest.approx(rz["top1"]["dataset"][0])
    assert rw["top1"]["blur=2"][0] == pytest.approx(rz["top1"]["dataset"][1])
    capsys.readouterr()
    assert evaluate.main(base + ["--checkpoint", zs, "--corruption", "blur:0,q"]) == 2
    assert evaluate.main(base + ["--checkpoint", zs, "--corruption", "blur:1", "--task", "retrieval"]) == 2
    assert evaluate.main(base + ["--wise-ft", zs]) == 2
    assert evaluate.main(base + ["--wise-ft", f"{zs},{zs}"]) == 2  # no head: not a fine-tuned run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "not a number" in err[0] and "--task zeroshot" in err[1]
    assert "two checkpoints" in err[2] and "no classifier head" in err[3]
