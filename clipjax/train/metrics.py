"""Training metrics: FLOPs per step and MFU, metrics.jsonl, optional TensorBoard scalars and a
loss-curve PNG.

MFU = (FLOPs of one step, all devices) / step time / (peak_flops_per_device x devices).
FLOPs come from XLA's cost analysis of the compiled step (`compiled.cost_analysis()["flops"]`,
which is per device for an SPMD program). XLA counts the body of a while loop once, and
scanned layer stacks are while loops, so the step's jaxpr is also counted (dot_general and
convolutions, scan bodies times their length) and the larger of the two global figures is
used; both are written to metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from typing import Optional

import jax

log = logging.getLogger("clipjax.train")

# ---------------------------------------------------------------------------------------------
# FLOPs


def xla_flops(compiled) -> Optional[float]:
    """FLOPs per device of one call of a compiled executable, from XLA's cost analysis."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends have none
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    flops = float(ca["flops"])
    return flops if flops > 0 else None


def _sub_jaxprs(value):
    from jax.extend import core as jcore

    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_flops(jaxpr) -> float:
    """Matmul + convolution FLOPs of a jaxpr (2 per multiply-add), scans times their length,
    the most expensive branch of a cond."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            k = math.prod(lhs[i] for i in lc)
            total += 2.0 * math.prod(out) * k
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            dn = eqn.params["dimension_numbers"]
            out_feat = rhs[dn.rhs_spec[0]]
            total += 2.0 * math.prod(out) * math.prod(rhs) / max(out_feat, 1)
        else:
            subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
            if not subs:
                continue
            if name == "cond":
                total += max(jaxpr_flops(j) for j in subs)
            else:
                inner = sum(jaxpr_flops(j) for j in subs)
                total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total


def step_flops(jitted, compiled, num_devices: int, *args) -> dict:
    """{"flops_per_step": global FLOPs used for MFU, "flops_per_step_xla": XLA's (global)}."""
    out = {}
    per_device = xla_flops(compiled)
    if per_device is not None:
        out["flops_per_step_xla"] = per_device * num_devices
    try:
        counted = jaxpr_flops(jax.make_jaxpr(jitted)(*args).jaxpr)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop training
        log.debug("jaxpr FLOP count failed: %s", e)
        counted = 0.0
    best = max(out.get("flops_per_step_xla", 0.0), counted)
    if best > 0:
        out["flops_per_step"] = best
    return out


def mfu(flops_per_step: Optional[float], step_time_s: float, peak_flops_per_device: float,
        num_devices: int) -> Optional[float]:
    if not flops_per_step or not peak_flops_per_device or step_time_s <= 0:
        return None
    return flops_per_step / step_time_s / (peak_flops_per_device * num_devices)


# ---------------------------------------------------------------------------------------------
# Writers


def _tensorboard_writer(logdir: str):
    """(write(tag, value, step), flush, close) from tensorboardX, torch or tf.summary; None if
    none of them imports."""
    try:
        from tensorboardX import SummaryWriter  # type: ignore

        w = SummaryWriter(logdir)
        return w.add_scalar, w.flush, w.close
    except Exception:
        pass
    try:
        from torch.utils.tensorboard import SummaryWriter  # type: ignore  # needs `tensorboard`

        w = SummaryWriter(logdir)
        return w.add_scalar, w.flush, w.close
    except Exception:
        pass
    try:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:  # tf.summary.scalar needs it
            return None
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # type: ignore

        try:
            tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
        except Exception:
            pass
        w = tf.summary.create_file_writer(logdir)

        def write(tag, value, step):
            with w.as_default():
                tf.summary.scalar(tag, value, step=step)

        return write, w.flush, w.close
    except Exception:
        return None


class _TensorBoard:
    """Scalars written from a background thread: importing a TensorBoard backend (TensorFlow
    takes seconds) never delays the training loop."""

    def __init__(self, logdir: str):
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(logdir,), daemon=True, name="clipjax-tb")
        self._thread.start()

    def _run(self, logdir):
        backend = _tensorboard_writer(logdir)
        while True:
            item = self._q.get()
            if item is None:
                break
            if backend is not None:
                step, record = item
                try:
                    for k, v in record.items():
                        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                            backend[0](k, float(v), step)
                    backend[1]()
                except Exception as e:  # noqa: BLE001 - TensorBoard is optional
                    log.debug("TensorBoard disabled: %s", e)
                    backend = None
        if backend is not None:
            backend[2]()

    def write(self, step: int, record: dict):
        self._q.put((step, record))

    def close(self, timeout: float = 60.0):
        self._q.put(None)
        self._thread.join(timeout)


class MetricsWriter:
    """metrics.jsonl (+ TensorBoard scalars under WORKDIR/tensorboard when a backend imports).
    Only process 0 writes."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a") if self.enabled else None
        self._tb = _TensorBoard(os.path.join(workdir, "tensorboard")) if self.enabled and tensorboard else None

    def write(self, record: dict):
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            self._tb.write(int(record["step"]), record)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_loss_curve(workdir: str, out_name: str = "loss_curve.png") -> Optional[str]:
    """Loss (and zero-shot top-1 when present) against step from metrics.jsonl -> PNG."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    loss, acc = {}, {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "loss" in r and "step" in r:
                loss[r["step"]] = r["loss"]  # a resumed run rewrites steps: keep the latest
            if "zeroshot_top1" in r and "step" in r:
                acc[r["step"]] = r["zeroshot_top1"]
    if not loss:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = sorted(loss)
    ax.plot(steps, [loss[s] for s in steps], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if acc:
        ax2 = ax.twinx()
        s2 = sorted(acc)
        ax2.plot(s2, [acc[s] for s in s2], "o-", color="tab:orange", label="zero-shot top-1")
        ax2.set_ylabel("zero-shot top-1")
        ax2.set_ylim(0, 1)
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out = os.path.join(workdir, out_name)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


__all__ = ["xla_flops", "jaxpr_flops", "step_flops", "mfu", "MetricsWriter", "plot_loss_curve"]
