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
import shutil
import threading
import time
from typing import Optional

import jax

from clipjax import storage

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
    takes seconds) never delays the training loop. For a workdir on object storage the event
    files are written to a local directory and uploaded (whole files) every `upload_every_s`
    and at close: event files are appended to, which object stores cannot do."""

    def __init__(self, logdir: str, upload_every_s: float = 60.0):
        self._q: queue.Queue = queue.Queue()
        self._remote = logdir if storage.is_remote(logdir) else None
        self._upload_every_s = upload_every_s
        if self._remote:
            import tempfile

            logdir = tempfile.mkdtemp(prefix="clipjax-tensorboard-")
        self._local = logdir
        self._thread = threading.Thread(target=self._run, args=(logdir,), daemon=True, name="clipjax-tb")
        self._thread.start()

    def _upload(self):
        if self._remote:
            try:
                storage.upload_dir(self._local, self._remote)
            except Exception as e:  # noqa: BLE001 - TensorBoard is optional; metrics.jsonl is the record
                log.warning("TensorBoard upload to %s failed: %s", self._remote, e)

    def _run(self, logdir):
        backend = _tensorboard_writer(logdir)
        uploaded = time.time()
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
            if self._remote and time.time() - uploaded > self._upload_every_s:
                self._upload()
                uploaded = time.time()
        if backend is not None:
            backend[2]()
        self._upload()
        if self._remote:
            shutil.rmtree(self._local, ignore_errors=True)

    def write(self, step: int, record: dict):
        self._q.put((step, record))

    def close(self, timeout: float = 60.0):
        self._q.put(None)
        self._thread.join(timeout)


METRICS_FILE = "metrics.jsonl"
METRICS_PARTS_DIR = "metrics"  # on object storage: metrics/part-NNNNNN.jsonl
PART_LINES = 200  # a part object is rewritten whole on each record: keep it small


class _PartObjects:
    """metrics.jsonl for object storage, which cannot append: records go to part objects
    metrics/part-NNNNNN.jsonl, the current part rewritten whole (by a background thread, so a
    slow store never stalls a step) after each record and a new part begun every PART_LINES
    records. A resumed run starts a new part after the existing ones; nothing is overwritten."""

    def __init__(self, workdir: str):
        self._dir = storage.join(workdir, METRICS_PARTS_DIR)
        try:
            existing = [n for n in storage.listdir(self._dir) if n.startswith("part-")]
        except FileNotFoundError:
            existing = []
        self._index = max((int(n[5:11]) for n in existing if n[5:11].isdigit()), default=-1) + 1
        self._lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="clipjax-metrics")
        self._thread.start()

    def _run(self):
        while True:
            item = self._q.get()
            if item is None:
                break
            while not self._q.empty():  # only the newest content of a part matters
                nxt = self._q.queue[0]
                if nxt is None or nxt[0] != item[0]:
                    break
                item = self._q.get()
            index, text = item
            try:
                storage.write_text(storage.join(self._dir, f"part-{index:06d}.jsonl"), text)
            except Exception as e:  # noqa: BLE001 - said once at close
                self._error = e

    def write(self, line: str):
        self._lines.append(line)
        self._q.put((self._index, "".join(self._lines)))
        if len(self._lines) >= PART_LINES:
            self._index, self._lines = self._index + 1, []

    def close(self):
        self._q.put(None)
        self._thread.join(120)
        if self._error is not None:
            log.warning("writing metrics to %s failed: %s", self._dir, self._error)


def read_metrics(workdir: str) -> list[dict]:
    """The records of a run's metrics.jsonl (or of its part objects on object storage), in
    order; lines that do not parse are passed over."""
    texts = []
    local = storage.join(workdir, METRICS_FILE)
    if storage.exists(local):
        texts.append(storage.read_text(local))
    parts = storage.join(workdir, METRICS_PARTS_DIR)
    if storage.is_remote(workdir):
        try:
            names = [n for n in storage.listdir(parts) if n.startswith("part-")]
        except FileNotFoundError:
            names = []
        texts += [storage.read_text(storage.join(parts, n)) for n in sorted(names)]
    out = []
    for text in texts:
        for line in text.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict):
                out.append(r)
    return out


class MetricsWriter:
    """metrics.jsonl (+ TensorBoard scalars under WORKDIR/tensorboard when a backend imports).
    Only process 0 writes. On object storage the records go to part objects (_PartObjects)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = storage.join(workdir, METRICS_FILE)
        self._file = self._parts = None
        if self.enabled:
            if storage.is_remote(workdir):
                self._parts = _PartObjects(workdir)
            else:
                self._file = open(self.path, "a")
        self._tb = _TensorBoard(storage.join(workdir, "tensorboard")) if self.enabled and tensorboard else None

    def write(self, record: dict):
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self._parts is not None:
            self._parts.write(line)
        else:
            self._file.write(line)
            self._file.flush()
        if self._tb is not None and "step" in record:
            self._tb.write(int(record["step"]), record)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._parts is not None:
            self._parts.close()
            self._parts = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_loss_curve(workdir: str, out_name: str = "loss_curve.png") -> Optional[str]:
    """Loss (and zero-shot top-1 when present) against step from metrics.jsonl -> PNG."""
    if jax.process_index() != 0:
        return None
    try:
        records = read_metrics(workdir)
    except (OSError, ValueError):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    loss, acc = {}, {}
    for r in records:
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
    ax.set_title(storage.basename(storage.normalize(workdir)))
    fig.tight_layout()
    out = storage.join(workdir, out_name)
    with storage.local_output(out) as local:
        fig.savefig(local, dpi=100)
    plt.close(fig)
    return out


__all__ = ["xla_flops", "jaxpr_flops", "step_flops", "mfu", "MetricsWriter", "read_metrics", "plot_loss_curve"]
