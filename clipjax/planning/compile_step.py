"""Compile a task's real train step for an abstract TPU topology (runs under the TPU compiler).

This module is what plan.py runs in its subprocess (`python -m clipjax.planning.compile_step
REQUEST.json RESULT.json`, with libtpu importable): the mesh is built from the topology's
abstract devices, the TrainState is abstract (shapes and shardings only, from `eval_shape` of
the task's own `model.init` and optimizer), and the step is the loop's own
`make_guarded_step(task.value_and_grad, tx, ema)` jitted as clipjax.train.loop jits it
(state donated). Nothing is allocated on a device: no array can live on abstract devices.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import ml_collections
from jax.experimental import topologies
from jax.sharding import NamedSharding

from clipjax import sharding as shd
from clipjax.planning import flops as analytic
from clipjax.planning import hlo
from clipjax.tasks import task_module
from clipjax.train.optimizer import make_optimizer
from clipjax.train.state import TrainState, make_guarded_step, opt_state_shardings


_OOM = re.compile(r"RESOURCE_EXHAUSTED: .*?total memory required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds")
_UNIT = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _sds(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    return total


def batch_specs(task, config, mesh, rules):
    """The step's *batch as sharded ShapeDtypeStructs: what the task's data stream yields
    (`Task.batch_spec`: global arrays, leading axis over the batch mesh axes)."""
    if task.batch_spec is None:
        raise NotImplementedError(f"task {task.name!r} does not state its batch layout (Task.batch_spec)")
    return tuple(jax.ShapeDtypeStruct(shape, dt, sharding=shd.batch_sharding(mesh, len(shape), rules))
                 for shape, dt in task.batch_spec(int(config.batch_size)))


def optimizer_state(tx, params, rep):
    """The optimizer state as ShapeDtypeStructs with the shardings create_state gives it
    (clipjax.train.state.opt_state_shardings: each moment sharded like its parameter)."""
    return jax.tree_util.tree_map(_sds, jax.eval_shape(tx.init, params), opt_state_shardings(tx, params, rep))


def abstract_state(task, config, mesh, rules, opt_sharding: str = "params"):
    """The TrainState clipjax.train.state.create_state would build, as ShapeDtypeStructs with
    the shardings it would have (parameters by the logical rules; optimizer moments as GSPMD
    propagates them from the parameters, read from the compiled `tx.init`)."""
    rep = shd.replicated(mesh)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    boxed = jax.eval_shape(lambda r: task.model.init(r, *task.dummy_inputs), key)
    var_sh = shd.logical_shardings(boxed, mesh, rules)
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    values = jax.tree_util.tree_map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed,
                                    is_leaf=is_box)
    variables = jax.tree_util.tree_map(_sds, values, var_sh)
    tx, _ = make_optimizer(config.optimizer, config.total_steps, variables["params"])
    if opt_sharding == "replicated":  # what jit(tx.init) in create_state gave before 665780b (docs/planning.md)
        opt_state = jax.tree_util.tree_map(lambda x: _sds(x, rep), jax.eval_shape(tx.init, variables["params"]))
    else:
        opt_state = optimizer_state(tx, variables["params"], rep)
    ema = None
    if float(config.get("ema_decay", 0.0) or 0.0) > 0:
        ema = variables["params"]
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    state = TrainState(step=scalar, variables=variables, opt_state=opt_state,
                       rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep), ema=ema, nonfinite=scalar)
    return state, tx


def compile_step(request: dict) -> dict:
    topology = request["topology"]
    config = ml_collections.ConfigDict(request["config"])
    t0 = time.time()
    if topology.startswith("cpu:"):  # host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N)
        devices = jax.devices("cpu")[:int(topology.split(":")[1])]
    else:
        devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    mesh_note = ""
    try:
        mesh = shd.make_mesh(dict(config.mesh), devices)
    except (NotImplementedError, AssertionError) as e:
        # jax.make_mesh maps mesh axes onto physical torus axes and refuses what it cannot
        # (a size-8 axis on a 16x16 torus; v4's topology description, one device per
        # TensorCore): plan on the devices in id order instead, and say so
        mesh_note = (f"clipjax.sharding.make_mesh refused this mesh on {topology} ({type(e).__name__}: "
                     f"{' '.join(str(e).split())[:300]}); planned on the devices in id order instead")
        shape = shd.mesh_shape(dict(config.mesh), len(devices))
        mesh = jax.sharding.Mesh(np.array(devices).reshape(shape), shd.MESH_AXES,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(shd.MESH_AXES))
    rules = shd.rules_from_config(config.get("axis_rules"))
    parts = shd.batch_shards(mesh, rules)
    if config.batch_size % parts:
        raise ValueError(f"batch_size {config.batch_size} does not split over the {parts} devices of the batch axes "
                         f"of the mesh {dict(mesh.shape)}")
    module = task_module(config)
    with tempfile.TemporaryDirectory() as workdir:
        task = module.make_task(config, mesh, rules, workdir, abstract=True)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, tx = abstract_state(task, config, mesh, rules, request.get("opt_state_sharding", "params"))
        batch = batch_specs(task, config, mesh, rules)
        step = make_guarded_step(task.value_and_grad, tx, float(config.get("ema_decay", 0.0) or 0.0))
        lowered = jax.jit(step, donate_argnums=(0,)).lower(state, *batch)
        t1 = time.time()
        try:
            compiled = lowered.compile()
        except Exception as e:  # the TPU compiler refuses a program that cannot fit in HBM
            oom = _OOM.search(str(e))
            if not oom:
                raise
            compiled = None
            oom_message = " ".join(str(e).split())[:500]
    t2 = time.time()
    info = {
        "topology": topology,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "batch_shards": parts,
        "mesh_note": mesh_note,
        "task": task.name,
        "params": sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.variables["params"])),
        "analytic": analytic.clip_step_flops(task.cfg, int(config.batch_size), config.model.get("remat_policy", "none"),
                                              frozen=list(config.optimizer.get("freeze", []) or []))
        if task.name == "clip" else None,
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
    }
    sizes = {"params_bytes": _bytes_per_device(state.variables),
             "opt_state_bytes": _bytes_per_device(state.opt_state),
             "ema_bytes": _bytes_per_device(state.ema) if state.ema is not None else 0,
             "batch_bytes": _bytes_per_device(batch)}
    if compiled is None:  # what the compiler said it needed; the state and batch are known exactly
        state_bytes = sizes["params_bytes"] + sizes["opt_state_bytes"] + sizes["ema_bytes"] + 8 * 3
        info.update(compiler_oom=oom_message, memory={
            "argument_bytes": state_bytes + sizes["batch_bytes"], "output_bytes": state_bytes,
            "alias_bytes": state_bytes, "temp_bytes": int(float(oom.group(1)) * _UNIT[oom.group(2)]),
            "code_bytes": 0, **sizes}, xla_cost={}, hlo=None)
        return info
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    text = compiled.as_text()
    if request.get("hlo_out"):
        with open(request["hlo_out"], "w") as f:
            f.write(text)
    info.update(memory={
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "code_bytes": int(mem.generated_code_size_in_bytes),
        **sizes,
    }, xla_cost={k: float(v) for k, v in (cost or {}).items()
                 if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")},
        hlo=hlo.analyse(text))
    return info


def main(argv):
    with open(argv[1]) as f:
        request = json.load(f)
    try:
        result = compile_step(request)
    except Exception as e:  # reported to plan.py as one line
        result = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:2000]}"}
        if os.environ.get("CLIPJAX_PLAN_TRACEBACK"):
            import traceback
            traceback.print_exc()
    with open(argv[2] + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(argv[2] + ".tmp", argv[2])
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
