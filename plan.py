"""Plan a training run on a TPU slice without one: compile the real train step for a TPU
topology with the real TPU compiler (libtpu, on this CPU) and report, per chip, memory against
HBM, FLOPs, a roofline step time and MFU, collective bytes and the partitioner's involuntary
rematerialisations.

    python plan.py --config configs/clip_vit_b16.py --topology v5e:16x16 [--config.K=V ...]
                   [--find-max-batch] [--headroom 0.05] [--json out.json]

Exit status: 0 when the config fits (per chip, with --headroom spare), 1 when it does not (the
message names the per-chip batch that fits), 2 for a bad config or a compile that fails.
Needs libtpu in .tpu-compiler (setup.sh). See docs/planning.md.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:16x16", "TPU topology: v4:4x4x8, v5e:16x16, v5p:4x4x4, v6e:16x16, ...")
_FIND = flags.DEFINE_bool("find_max_batch", False, "find the largest per-chip batch that fits (a few more compiles)")
_HEADROOM = flags.DEFINE_float("headroom", 0.05, "fraction of each chip's HBM kept free when deciding what fits")
_JSON = flags.DEFINE_string("json", "", "write the plan as JSON here")
_HLO = flags.DEFINE_string("hlo", "", "write the compiled HLO text here")
_MAX_COMPILES = flags.DEFINE_integer("max_compiles", 4, "compiles --find-max-batch may spend (besides the first)")
_OPT = flags.DEFINE_enum("opt_state_sharding", "params", ["params", "replicated"],
                         "params: optimizer moments sharded like their parameters (what create_state does); "
                         "replicated: what its jax.jit(tx.init) gave before it had out_shardings")
_TIMEOUT = flags.DEFINE_float("timeout", 3600, "seconds one compile may take")


def _gib(x):
    return f"{x:7.2f} GiB"


def _print(s):
    c = s["chips"]
    print(f"{s['topology']}: {c} chips ({s['chip']}, {s['devices_per_chip']} JAX device(s) per chip), mesh {s['mesh']}, "
          f"batch {s['batch_size']} = {s['per_chip_batch']:g} per chip, {s['params'] / 1e6:.1f}M parameters")
    if s.get("mesh_note"):
        print(f"note: {s['mesh_note']}")
    print("memory per chip (the TPU compiler's memory_analysis):")
    print(f"  arguments    {_gib(s['arguments_per_chip_gib'])}  (parameters {s['parameters_per_chip_gib']:.2f}, "
          f"optimizer {s['optimizer_per_chip_gib']:.2f}, batch {s['batch_per_chip_gib']:.2f})")
    print(f"  temporaries  {_gib(s['temporaries_per_chip_gib'])}")
    print(f"  outputs      {_gib(s['outputs_per_chip_gib'])}  ({s['aliased_per_chip_gib']:.2f} aliased to the "
          "donated state)")
    print(f"  code         {_gib(s['code_per_chip_gib'])}")
    print(f"  total        {_gib(s['total_per_chip_gib'])}  of {s['hbm_per_chip_gib']} GiB HBM "
          f"({s['usable_per_chip_gib']:.2f} usable with {100 * s['headroom']:.0f}% headroom): "
          f"{'fits' if s['fits'] else 'DOES NOT FIT'}")
    if s.get("compiler_oom"):
        print(f"  (the TPU compiler refused the program: {s['compiler_oom'][:200]})")
        return
    f = s["flops"]
    print("FLOPs per step (global):")
    if f["analytic_model"]:
        print(f"  analytic model (3x forward)   {f['analytic_model']:.4g}")
        print(f"  analytic hardware (+ remat)   {f['analytic_hardware']:.4g}")
    print(f"  compiled HLO matmuls          {f['hlo_matmul_per_step']:.4g}  (loop bodies x trip counts "
          f"{f['while_trip_counts']}; once each: {f['hlo_matmul_loop_bodies_once']:.4g})")
    print(f"  XLA cost_analysis             {f['xla_cost_analysis']:.4g}  (counts each loop body once)")
    if f["hlo_over_analytic_hardware"]:
        print(f"  compiled / analytic hardware  {f['hlo_over_analytic_hardware']:.3f}")
    print(f"roofline per chip (peak {s['peak_bf16_flops_per_chip'] / 1e12:.0f} TF/s bf16, HBM "
          f"{s['hbm_bytes_per_s_per_chip'] / 1e9:.0f} GB/s, ICI {s['ici_bytes_per_s_per_chip'] / 1e9:.0f} GB/s):")
    print(f"  compute {s['compute_s'] * 1e3:.1f} ms, collectives (ICI) {s['ici_s'] * 1e3:.1f} ms, HBM upper bound "
          f"{s['hbm_s_upper_bound'] * 1e3:.1f} ms (not used)")
    print(f"  ->"
          f" step {s['projected_step_s'] * 1e3:.1f} ms, "
          f"{s['projected_samples_per_s_per_chip']:.0f} samples/s per chip, MFU {100 * s['projected_mfu']:.1f}%"
          + ("" if f["analytic_model"] else " (of the compiled matmul FLOPs, recompute included: no analytic "
             "formula for this task)"))
    print("collectives per chip per step:")
    for k, v in s["collectives_per_chip"].items():
        print(f"  {k:19s} {v['count']:7.0f} ops  {v['gib']:.4f} GiB")
    ev = s["remat_events"]
    print(f"involuntary full rematerializations: {len(ev)}")
    for e in ev:
        print(f"  {e.get('hlo', '?')}  {e.get('from', '')} -> {e.get('to', '')}  [{e.get('op_name', '')}]")


def main(argv):
    del argv
    from clipjax.planning import run
    from clipjax.planning.hardware import num_chips

    def fail(message, code=2):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)

    try:
        config = _CONFIG.value
        config.get("task")
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        fail(f"cannot load --config: {' '.join(str(e).split())}")
    topology = _TOPOLOGY.value
    try:
        chips = num_chips(topology)
        from clipjax.planning.hardware import chip
        chip(topology)
    except (ValueError, IndexError) as e:
        fail(f"--topology {topology!r}: {e}")
    cfg = config.to_dict()
    try:
        print(f"compiling the train step of {_CONFIG.value.get('task', 'clip') or 'clip'} for {topology} "
              f"(global batch {config.batch_size}) ...", flush=True)
        first = run.summarise(run.compile_once(cfg, topology, _TIMEOUT.value, _HLO.value, _OPT.value), _HEADROOM.value,
                              config.batch_size)
    except run.PlanError as e:
        fail(e)
    _print(first)
    out = dict(first)
    out["opt_state_sharding"] = _OPT.value
    out["estimated_max_per_chip_batch"] = round(run.estimated_max_per_chip_batch(first), 1)
    print(f"estimated largest per-chip batch (memory linear in the batch, unverified): "
          f"{out['estimated_max_per_chip_batch']:g}")
    shards = first["batch_shards"]
    if _FIND.value or not first["fits"]:
        print("searching the largest per-chip batch that fits ...", flush=True)
        try:
            best, s = run.find_max_batch(cfg, topology, shards, first, _HEADROOM.value, _MAX_COMPILES.value,
                                         _TIMEOUT.value, log=lambda m: print(m, flush=True),
                                         opt_state_sharding=_OPT.value)
        except run.PlanError as e:
            fail(e)
        per_chip = best * shards / chips
        out["max_per_chip_batch"] = per_chip
        out["max_global_batch"] = best * shards
        if s is not None:
            out["at_max_batch"] = {k: s[k] for k in ("total_per_chip_gib", "projected_step_s",
                                                      "projected_samples_per_s_per_chip", "projected_mfu")}
            print(f"largest per-chip batch that fits: {per_chip:g} (global {best * shards}): "
                  f"{s['total_per_chip_gib']:.2f} GiB per chip, {s['projected_samples_per_s_per_chip']:.0f} "
                  f"samples/s per chip, MFU {100 * s['projected_mfu']:.1f}%")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=1)
    if not first["fits"]:
        if out.get("max_per_chip_batch"):
            msg = (f"does not fit: {first['total_per_chip_gib']:.2f} GiB per chip > {first['usable_per_chip_gib']:.2f} "
                   f"usable; per-chip batch {out['max_per_chip_batch']:g} fits "
                   f"(--config.batch_size={out['max_global_batch']})")
        else:
            msg = (f"does not fit: {first['total_per_chip_gib']:.2f} GiB per chip > {first['usable_per_chip_gib']:.2f} "
                   "usable, even at per-chip batch 1: shard more (mesh.fsdp / tensor) or remat more")
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = [a.replace("--find-max-batch", "--find_max_batch").replace("--max-compiles", "--max_compiles")
                .replace("--opt-state-sharding", "--opt_state_sharding") for a in sys.argv]
    app.run(main)
