"""Compiled per-device temporary memory of the contrastive loss's gradient: global logits
(GSPMD) vs the ring (`shard_map` + `ppermute`, checkpointed blocks), softmax and sigmoid.

Each device count runs in its own subprocess, because the forced host device count
(`XLA_FLAGS=--xla_force_host_platform_device_count=D`) must be set before jax is imported.
Nothing is executed: `jax.jit(jax.grad(loss)).lower(...).compile().memory_analysis()` is read
for abstract inputs sharded over the batch axes, so large D is cheap. Prints a markdown table
of `temp_size_in_bytes` (MiB per device).

    python benchmarks/loss_memory.py [--devices 8 16 32] [--per-device 1024] [--dim 512]

`--worker` is the per-subprocess entry point (prints one JSON line); tests/test_losses.py
uses it too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("softmax/global", "softmax/ring", "sigmoid/global", "sigmoid/ring")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def worker(devices: int, per_device: int, dim: int, variants) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from clipjax.losses import contrastive as losses
    from clipjax.sharding import make_mesh

    assert jax.device_count() == devices, jax.device_count()
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    n = devices * per_device
    emb = jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    fns = {
        "softmax/global": lambda i, t, s, b: losses.softmax_clip_loss(i, t, s),
        "softmax/ring": lambda i, t, s, b: losses.ring_softmax_clip_loss(i, t, s, mesh),
        "sigmoid/global": lambda i, t, s, b: losses.sigmoid_loss(i, t, s, b),
        "sigmoid/ring": lambda i, t, s, b: losses.ring_sigmoid_loss(i, t, s, b, mesh),
    }
    out = {}
    for name in variants:
        # gradients w.r.t. both embeddings and the scale (the bias is unused by softmax)
        grad = jax.jit(jax.grad(fns[name], argnums=(0, 1, 2)))
        with jax.set_mesh(mesh):
            compiled = grad.lower(emb, emb, scalar, scalar).compile()
        out[name] = int(compiled.memory_analysis().temp_size_in_bytes)
    return out


def measure(devices, per_device: int, dim: int, variants=VARIANTS, timeout: float = 600) -> dict:
    """{D: {variant: temp bytes}}, one subprocess per device count."""
    res = {}
    for d in devices:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--devices", str(d),
               "--per-device", str(per_device), "--dim", str(dim), "--variants", *variants]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if p.returncode:
            raise RuntimeError(f"worker D={d} failed:\n{p.stderr[-4000:]}")
        res[d] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def table(res: dict, per_device: int, dim: int) -> str:
    devs = sorted(res)
    variants = list(res[devs[0]])
    mib = lambda b: f"{b / 2**20:.1f}"
    lines = [f"compiled temp memory per device (MiB) of jit(grad(loss)), per-device batch {per_device}, d={dim}",
             "", "| variant | " + " | ".join(f"D={d} (N={d * per_device})" for d in devs) + " |",
             "|---|" + "---|" * len(devs)]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(mib(res[d][v]) for d in devs) + " |")
    for kind in ("softmax", "sigmoid"):
        if f"{kind}/global" in variants and f"{kind}/ring" in variants:
            lines.append(f"| {kind} ring / global | " + " | ".join(
                f"{res[d][f'{kind}/ring'] / res[d][f'{kind}/global']:.2f}" for d in devs) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--per-device", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.devices[0], a.per_device, a.dim, a.variants)))
        return
    print(table(measure(a.devices, a.per_device, a.dim, a.variants), a.per_device, a.dim))


if __name__ == "__main__":
    main()
