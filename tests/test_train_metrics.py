"""FLOP counting for MFU, and the metrics writers."""

import json
import os

import jax
import jax.numpy as jnp

from clipjax.train import metrics as tm


def _scanned(x, w):
    def body(c, _):
        return jnp.tanh(c @ w), None

    y, _ = jax.lax.scan(body, x, None, length=4)
    return y.sum()


def test_flops_count_scanned_layers():
    x, w = jnp.ones((64, 128)), jnp.ones((128, 128))
    one = 2 * 64 * 128 * 128
    f = jax.jit(_scanned)
    assert tm.jaxpr_flops(jax.make_jaxpr(f)(x, w).jaxpr) == 4 * one
    # forward + the two backward matmuls per layer (d/dx and d/dw)
    assert tm.jaxpr_flops(jax.make_jaxpr(jax.grad(_scanned, argnums=(0, 1)))(x, w).jaxpr) == 12 * one
    compiled = f.lower(x, w).compile()
    xla = tm.xla_flops(compiled)
    assert xla is not None and one <= xla < 4 * one  # XLA counts a while body once
    got = tm.step_flops(f, compiled, 1, x, w)
    assert got["flops_per_step"] == 4 * one and got["flops_per_step_xla"] == xla
    assert tm.mfu(4e9, 0.5, 1e10, 4) == 4e9 / 0.5 / 4e10
    assert tm.mfu(None, 0.5, 1e10, 4) is None


def test_metrics_writer_and_loss_curve(tmp_path):
    w = tm.MetricsWriter(str(tmp_path), tensorboard=True)  # silently no TensorBoard if none imports
    for step in range(1, 6):
        w.write({"step": step, "loss": 3.0 / step})
    w.write({"step": 5, "zeroshot_top1": 0.5})
    w.close()
    lines = [json.loads(x) for x in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 5]
    png = tm.plot_loss_curve(str(tmp_path))
    assert png and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
