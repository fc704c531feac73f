"""Per-device memory of a full train step (model + loss + AdamW), read from XLA's compiled
memory analysis on forced host devices: ring loss vs global logits, against device count
and global batch. Nothing is executed or allocated: the state is abstract.

    python benchmarks/train_memory.py [--model ViT-B/16] [--devices 8 32] [--per-device-batch 32]

Each device count runs in its own subprocess (XLA_FLAGS must be set before jax starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def worker(model: str, devices: int, per_device: int, impl: str, remat: str) -> dict:
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P

    from configs.default import get_config
    from clipjax import sharding as shd
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset
    from clipjax.tasks.clip import make_train_step
    from clipjax.train.state import TrainState
    from clipjax.train.optimizer import make_optimizer

    c = get_config()  # optimizer settings of the default recipe
    cfg = get_preset(model).replace(remat_policy=remat)
    model_ = CLIP(cfg)
    mesh = shd.make_mesh({"data": 1, "fsdp": devices, "tensor": 1})  # FSDP: params sharded too
    rules = shd.DEFAULT_RULES
    batch = per_device * devices
    s, ctx = cfg.vision.image_size, cfg.text.context_length
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        dummy = (jnp.zeros((1, s, s, 3)), jnp.zeros((1, ctx), jnp.int32))
        boxed = jax.eval_shape(lambda r: model_.init(r, *dummy), jax.random.PRNGKey(0))
        var_sh = shd.logical_shardings(boxed, mesh, rules)
        plain = jax.eval_shape(lambda r: nn.unbox(model_.init(r, *dummy)), jax.random.PRNGKey(0))
        abstract = jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                          plain, var_sh)
        tx, _ = make_optimizer(c.optimizer, 1000, abstract["params"])
        opt = jax.eval_shape(tx.init, abstract["params"])
        rep = NamedSharding(mesh, P())
        shard_of = {}
        for leaf in jax.tree_util.tree_leaves(abstract["params"]):
            shard_of.setdefault(leaf.shape, leaf.sharding)
        opt = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard_of.get(x.shape, rep) if x.ndim else rep),
            opt)
        scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)  # noqa: E731
        state = TrainState(step=scalar(jnp.int32), variables=abstract, opt_state=opt,
                           rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep), ema=None,
                           nonfinite=scalar(jnp.int32))
        images = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32, sharding=shd.batch_sharding(mesh, 4, rules))
        ids = jax.ShapeDtypeStruct((batch, ctx), jnp.int32, sharding=shd.batch_sharding(mesh, 2, rules))
        step = jax.jit(make_train_step(model_, tx, "softmax", loss_impl=impl, mesh=mesh), donate_argnums=(0,))
        mem = step.lower(state, images, ids).compile().memory_analysis()
    mib = 1 << 20
    return dict(devices=devices, batch=batch, impl=impl, temp=mem.temp_size_in_bytes / mib,
                args=mem.argument_size_in_bytes / mib, out=mem.output_size_in_bytes / mib,
                alias=mem.alias_size_in_bytes / mib)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B/16")
    p.add_argument("--devices", type=int, nargs="+", default=[8, 32])
    p.add_argument("--per-device-batch", type=int, nargs="+", default=[32])
    p.add_argument("--remat", default="full")
    p.add_argument("--worker", nargs=3, metavar=("DEVICES", "PER_DEVICE", "IMPL"))
    args = p.parse_args()
    if args.worker:
        d, n, impl = args.worker
        print(json.dumps(worker(args.model, int(d), int(n), impl, args.remat)))
        return
    print(f"# {args.model}, remat={args.remat}, FSDP over all devices, fp32, AdamW; MiB per device")
    print("| devices | global batch | loss | temp | arguments (params+opt+batch) | temp ring/global |")
    print("|---|---|---|---|---|---|")
    for d in args.devices:
        for n in args.per_device_batch:
            rows = {}
            for impl in ("global", "ring"):
                env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}", JAX_PLATFORMS="cpu")
                out = subprocess.run([sys.executable, __file__, "--model", args.model, "--remat", args.remat,
                                      "--worker", str(d), str(n), impl], env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            for impl in ("global", "ring"):
                r = rows[impl]
                ratio = f"{rows['ring']['temp'] / rows['global']['temp']:.2f}" if impl == "ring" else ""
                print(f"| {d} | {r['batch']} | {impl} | {r['temp']:.0f} | {r['args']:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
