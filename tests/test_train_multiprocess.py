"""Two processes x 4 CPU devices joined by jax.distributed train exactly like one process with
8 devices: same batches (each process draws its own rows), same collectives, same result."""

import os
import socket
import subprocess
import sys

import numpy as np

from clipjax.convert.formats import load_clipjax
from test_train_smoke import TINY_SHAPES_ARGS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ARGS = ["--config.total_steps=6", "--config.batch_size=16", "--config.log_every=2", "--config.eval_every=6",
        "--config.eval_examples=64", "--config.checkpoint_every=3", "--config.optimizer.warmup_steps=1",
        "--config.tensorboard=False", "--config.mesh.data=-1", "--config.mesh.fsdp=2", *TINY_SHAPES_ARGS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, devices, **env_extra):
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               JAX_DEFAULT_MATMUL_PRECISION="highest", **env_extra)
    cmd = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir), *ARGS]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    multi = [_launch(tmp_path / "multi", 4, CLIPJAX_COORDINATOR=f"127.0.0.1:{port}", CLIPJAX_NUM_PROCESSES="2",
                     CLIPJAX_PROCESS_ID=str(i)) for i in range(2)]
    single = _launch(tmp_path / "single", 8)
    outs = []
    try:
        for p in multi + [single]:
            out, _ = p.communicate(timeout=300)
            outs.append(out)
    finally:
        for p in multi + [single]:
            if p.poll() is None:
                p.kill()
    for p, out in zip(multi + [single], outs):
        assert p.returncode == 0, out
    assert "process 0 of 2, 4 local / 8 global devices" in outs[0], outs[0]
    assert "process 1 of 2, 4 local / 8 global devices" in outs[1], outs[1]

    import jax

    _, single_vars = load_clipjax(str(tmp_path / "single" / "checkpoints"))
    # a checkpoint written by 2 processes restores on this one process given local shardings
    local = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), single_vars)
    _, multi_vars = load_clipjax(str(tmp_path / "multi" / "checkpoints"), shardings=target)

    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                   multi_vars, single_vars)
    assert max(jax.tree_util.tree_leaves(diffs)) < 1e-5, diffs
    lines = open(tmp_path / "multi" / "metrics.jsonl").read().splitlines()
    assert sum('"loss"' in x for x in lines) == 3  # only process 0 writes metrics


def test_distributed_args_from_config_env_and_cluster():
    import ml_collections

    from clipjax.train.distributed import distributed_args

    cfg = ml_collections.ConfigDict(dict(distributed=dict(coordinator_address="", num_processes=1, process_id=0)))
    assert distributed_args(cfg, env={}) is None  # single process: no-op
    assert distributed_args(None, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed_args(cfg, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == {}  # JAX detects SLURM
    assert distributed_args(cfg, env={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert distributed_args(cfg, env={"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    env = {"CLIPJAX_COORDINATOR": "10.0.0.1:1234", "CLIPJAX_NUM_PROCESSES": "2", "CLIPJAX_PROCESS_ID": "1"}
    assert distributed_args(cfg, env=env) == dict(coordinator_address="10.0.0.1:1234", num_processes=2,
                                                  process_id=1)
    cfg.distributed.coordinator_address = "host:99"
    cfg.distributed.num_processes = 4
    cfg.distributed.process_id = 3
    assert distributed_args(cfg, env={}) == dict(coordinator_address="host:99", num_processes=4, process_id=3)
    assert distributed_args(cfg, env={"CLIPJAX_PROCESS_ID": "2"})["process_id"] == 2  # env overrides config
