"""Multi-process start-up: one call before anything touches a device.

`maybe_initialize_distributed(config)` calls `jax.distributed.initialize` when the run is one
process of several, and does nothing on a single process, so the trainer has one code path
from a laptop to a pod. Sources, first match wins:

1. explicit: `config.distributed.{coordinator_address, num_processes, process_id}`, each
   overridable from the environment (`CLIPJAX_COORDINATOR`, `CLIPJAX_NUM_PROCESSES`,
   `CLIPJAX_PROCESS_ID`; optional `CLIPJAX_LOCAL_DEVICE_IDS`, comma-separated);
2. a SLURM job step with more than one task (`SLURM_NTASKS` > 1) — JAX reads the rest;
3. a multi-host Cloud TPU slice (`TPU_WORKER_HOSTNAMES` lists several hosts, or
   `MEGASCALE_COORDINATOR_ADDRESS` is set) — JAX reads the rest.

Two processes on one machine (CPU, gloo collectives)::

    CLIPJAX_COORDINATOR=127.0.0.1:12345 CLIPJAX_NUM_PROCESSES=2 CLIPJAX_PROCESS_ID=0 python train.py ...
    CLIPJAX_COORDINATOR=127.0.0.1:12345 CLIPJAX_NUM_PROCESSES=2 CLIPJAX_PROCESS_ID=1 python train.py ...
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import jax

log = logging.getLogger("clipjax.train")

ENV_COORDINATOR = "CLIPJAX_COORDINATOR"
ENV_NUM_PROCESSES = "CLIPJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CLIPJAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "CLIPJAX_LOCAL_DEVICE_IDS"


def _already_initialized() -> bool:
    try:
        from jax._src import distributed as _dist

        return _dist.global_state.client is not None
    except Exception:  # private API moved: assume not, initialize() will say so if wrong
        return False


def _explicit(config, env: Mapping[str, str]) -> Optional[dict]:
    dist = {}
    if config is not None and config.get("distributed") is not None:
        dist = {k: v for k, v in dict(config.distributed).items() if v is not None and v != ""}
    for key, var, cast in ((ENV_COORDINATOR, "coordinator_address", str),
                           (ENV_NUM_PROCESSES, "num_processes", int),
                           (ENV_PROCESS_ID, "process_id", int)):
        if env.get(key):
            dist[var] = cast(env[key])
    if env.get(ENV_LOCAL_DEVICE_IDS):
        dist["local_device_ids"] = [int(x) for x in env[ENV_LOCAL_DEVICE_IDS].split(",")]
    if not dist.get("coordinator_address"):
        return None
    if int(dist.get("num_processes", 1)) <= 1:
        return None
    missing = [k for k in ("num_processes", "process_id") if k not in dist]
    if missing:
        raise ValueError(f"distributed: coordinator_address given but not {missing} "
                         f"(config.distributed.* or ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})")
    out = dict(coordinator_address=str(dist["coordinator_address"]),
               num_processes=int(dist["num_processes"]), process_id=int(dist["process_id"]))
    if dist.get("local_device_ids") is not None:
        out["local_device_ids"] = list(dist["local_device_ids"])
    return out


def cluster_kind(env: Mapping[str, str] = None) -> Optional[str]:
    """'slurm' | 'tpu' when the environment describes a multi-process cluster JAX can read."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def distributed_args(config=None, env: Mapping[str, str] = None):
    """-> None (single process), {} (let JAX detect the cluster) or initialize()'s kwargs."""
    env = os.environ if env is None else env
    explicit = _explicit(config, env)
    if explicit is not None:
        return explicit
    if cluster_kind(env) is not None:
        return {}
    return None


def maybe_initialize_distributed(config=None) -> bool:
    """Initialise jax.distributed when this is one process of several; True if it did (or
    already was). Must run before the first use of jax.devices() and friends."""
    if _already_initialized():
        return True
    args = distributed_args(config)
    if args is None:
        return False
    where = args.get("coordinator_address", cluster_kind() or "auto-detected cluster")
    log.info("jax.distributed.initialize(%s)", {k: v for k, v in args.items()} or where)
    jax.distributed.initialize(**args)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def gather_json(obj) -> list:
    """Every process's JSON-able `obj`, in process order, on every process (one process: [obj]).
    Used for what each process alone knows, e.g. its position in its own data shards, so that
    process 0 can store all of them in the checkpoint."""
    import json

    if jax.process_count() == 1:
        return [obj]
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64))
    longest = int(np.max(sizes))
    padded = np.zeros(longest, np.uint8)
    padded[:data.size] = data
    every = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(every[i][:int(sizes[i][0])]).decode("utf-8")) for i in range(jax.process_count())]
