"""Run `compile_step` in a subprocess that sees the TPU compiler, and turn its figures into a
plan: memory per chip against HBM, FLOPs (analytic and the compiler's, reconciled), a
roofline step time and MFU, collective bytes, the partitioner's involuntary-remat warnings,
and the largest per-chip batch that fits.

This module does not import jax: the normal environment never sees libtpu (with it
importable, every `import jax` would print TPU-init errors). The subprocess gets
`PYTHONPATH=<repo>/.tpu-compiler` (setup.sh installs libtpu there) and environment that keeps
libtpu's start-up quiet while still logging the SPMD partitioner's warnings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from clipjax.planning import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_COMPILER = os.path.join(ROOT, ".tpu-compiler")
_REMAT = re.compile(r"Involuntary full rematerialization.*?from sharding (\{.*?\}) to (\{.*?\}) efficiently for HLO "
                    r"operation %(\S+) = (\S+) ([\w\-]+)\(")
_OPNAME = re.compile(r'op_name="([^"]*)"')


class PlanError(RuntimeError):
    pass


def compiler_available() -> bool:
    return os.path.isdir(os.path.join(TPU_COMPILER, "libtpu"))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TPU_COMPILER, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(JAX_PLATFORMS="cpu",  # the process's own backend; the topology is abstract TPU devices
               TPU_ACCELERATOR_TYPE="v5litepod-4", TPU_WORKER_HOSTNAMES="localhost", TPU_SKIP_MDS_QUERY="1",
               TF_CPP_MIN_LOG_LEVEL="1", TPU_STDERR_LOG_LEVEL="1", TPU_MIN_LOG_LEVEL="1",
               ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # several plans at once: no libtpu lockfile
    env.pop("XLA_FLAGS", None)
    return env


def remat_events(stderr: str) -> list[dict]:
    """The SPMD partitioner's 'Involuntary full rematerialization' warnings, one dict each."""
    out = []
    for line in stderr.splitlines():
        if "Involuntary full rematerialization" not in line:
            continue
        m = _REMAT.search(line)
        op = _OPNAME.search(line)
        ev = {"line": line[line.find("Involuntary"):][:600]}
        if m:
            ev.update({"from": m.group(1), "to": m.group(2), "hlo": f"%{m.group(3)} = {m.group(4)} {m.group(5)}"})
        if op:
            ev["op_name"] = op.group(1)
        out.append(ev)
    return out


def compile_once(config_dict: dict, topology: str, timeout: float = 3600, hlo_out: str = "",
                 opt_state_sharding: str = "params") -> dict:
    """Compile the step of `config_dict` for `topology` in the TPU-compiler subprocess."""
    if not compiler_available():
        raise PlanError(f"the TPU compiler is not installed in {TPU_COMPILER} (setup.sh: pip install --target "
                        ".tpu-compiler libtpu==0.0.42.1)")
    with tempfile.TemporaryDirectory() as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w") as f:
            json.dump({"topology": topology, "config": config_dict, "hlo_out": hlo_out,
                       "opt_state_sharding": opt_state_sharding}, f)
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "clipjax.planning.compile_step", req, res], env=_env(),
                               cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PlanError(f"compiling for {topology} took over {timeout:.0f} s") from None
        if not os.path.exists(res):
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            raise PlanError(f"the compile subprocess failed (exit {p.returncode}):\n{tail}")
        with open(res) as f:
            result = json.load(f)
    if "error" in result:
        raise PlanError(result["error"])
    result["remat_events"] = remat_events(p.stderr)
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def summarise(r: dict, headroom: float, batch_size: int) -> dict:
    """Per-chip figures of one compile result (see docs/planning.md for every key)."""
    topo = r["topology"]
    chip = hardware.chip(topo)
    chips = hardware.num_chips(topo)
    per_chip = r["devices"] // chips  # JAX devices per chip (v4's topology: one per TensorCore)
    m = r["memory"]
    gib = hardware.GIB
    dev_total = m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"] + m["code_bytes"]
    total = per_chip * dev_total / gib
    limit = chip.hbm_gib * (1.0 - headroom)
    h = r["hlo"] or {"matmul_flops": 0.0, "matmul_flops_loop_bodies_once": 0.0, "while_trip_counts": [],
                     "collectives": {}}
    xla_flops = r["xla_cost"].get("flops", 0.0)
    a = r.get("analytic") or {}
    hw_dev = h["matmul_flops"]  # per device per step, loop bodies counted as often as they run
    chip_flops = per_chip * hw_dev
    compute_s = chip_flops / chip.peak_bf16_flops
    once = h["matmul_flops_loop_bodies_once"] or 1.0
    hbm_bytes = per_chip * r["xla_cost"].get("bytes accessed", 0.0) * (h["matmul_flops"] / once)
    memory_s = hbm_bytes / chip.hbm_bytes_per_s
    coll_bytes = per_chip * sum(c["bytes"] for c in h["collectives"].values())
    ici_s = coll_bytes / chip.ici_bytes_per_s
    # compute- and ICI-bound roofline; the HBM time is a crude upper bound (XLA's bytes accessed
    # count each loop body once: scaled here by the matmul trip-count ratio, which also scales
    # the non-loop part) and is reported, not used
    step_s = max(compute_s, ici_s)
    model_flops = a.get("model_flops") or hw_dev * r["devices"]
    if r.get("compiler_oom"):  # no program, no roofline: only the memory the compiler asked for
        step_s = 0.0
    per_chip_batch = batch_size / chips
    return {
        "topology": topo,
        "chip": chip.name,
        "chips": chips,
        "devices_per_chip": per_chip,
        "mesh": r["mesh"],
        "batch_shards": r["batch_shards"],
        "mesh_note": r.get("mesh_note", ""),
        "batch_size": batch_size,
        "per_chip_batch": per_chip_batch,
        "params": r["params"],
        "hbm_per_chip_gib": chip.hbm_gib,
        "headroom": headroom,
        "usable_per_chip_gib": round(limit, 3),
        "arguments_per_chip_gib": round(per_chip * m["argument_bytes"] / gib, 3),
        "parameters_per_chip_gib": round(per_chip * (m["params_bytes"] + m["ema_bytes"]) / gib, 3),
        "optimizer_per_chip_gib": round(per_chip * m["opt_state_bytes"] / gib, 3),
        "batch_per_chip_gib": round(per_chip * m["batch_bytes"] / gib, 3),
        "temporaries_per_chip_gib": round(per_chip * m["temp_bytes"] / gib, 3),
        "outputs_per_chip_gib": round(per_chip * m["output_bytes"] / gib, 3),
        "aliased_per_chip_gib": round(per_chip * m["alias_bytes"] / gib, 3),
        "code_per_chip_gib": round(per_chip * m["code_bytes"] / gib, 3),
        "total_per_chip_gib": round(total, 3),
        "fits": total <= limit,
        "flops_per_step": model_flops,
        # the analytic formula covers CLIP's towers; other tasks (CLIPSeg, Tag2Text, RAM) count
        # the compiled matmuls, recompute included, so their MFU is a hardware-FLOPs utilisation
        "flops_source": "analytic model FLOPs" if a.get("model_flops") else "compiled HLO matmuls (recompute included)",
        "flops": {
            "analytic_model": a.get("model_flops"),
            "analytic_hardware": a.get("hardware_flops"),
            "analytic_six_n_d": a.get("six_n_d"),
            "hlo_matmul_per_step": hw_dev * r["devices"],
            "hlo_matmul_loop_bodies_once": h["matmul_flops_loop_bodies_once"] * r["devices"],
            "xla_cost_analysis": xla_flops * r["devices"],
            "while_trip_counts": h["while_trip_counts"],
            "hlo_over_analytic_hardware": (hw_dev * r["devices"] / a["hardware_flops"]) if a.get("hardware_flops")
            else None,
        },
        "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
        "hbm_bytes_per_s_per_chip": chip.hbm_bytes_per_s,
        "ici_bytes_per_s_per_chip": chip.ici_bytes_per_s,
        "compute_s": compute_s,
        "hbm_s_upper_bound": memory_s,
        "ici_s": ici_s,
        "projected_step_s": step_s,
        "projected_samples_per_s_per_chip": per_chip_batch / step_s if step_s else None,
        "projected_mfu": model_flops / (step_s * chips * chip.peak_bf16_flops) if step_s else None,
        "collectives_per_chip": {k: {"count": v["count"], "gib": round(per_chip * v["bytes"] / gib, 4),
                                     "operand_gib": round(per_chip * v["operand_bytes"] / gib, 4)}
                                 for k, v in h["collectives"].items()},
        "remat_events": r.get("remat_events", []),
        "compiler_oom": r.get("compiler_oom"),
        "compile_s": r.get("compile_s"),
        "wall_s": r.get("wall_s"),
    }


def estimated_max_per_chip_batch(s: dict) -> float:
    """From one compile: the per-chip batch at which the batch-dependent memory (everything but
    the state and the code) would fill the usable HBM, assuming it is proportional to the batch
    (an estimate; --find-max-batch verifies with compiles)."""
    fixed = s["arguments_per_chip_gib"] - s["batch_per_chip_gib"] + s["code_per_chip_gib"]
    scale = (s["usable_per_chip_gib"] - fixed) / max(s["total_per_chip_gib"] - fixed, 1e-9)
    return max(0.0, s["per_chip_batch"] * scale)


def _granule(per_device: int) -> int:
    return 8 if per_device >= 16 else 1


def find_max_batch(config_dict: dict, topology: str, shards: int, first: dict, headroom: float,
                   max_compiles: int = 4, timeout: float = 3600, log=print,
                   opt_state_sharding: str = "params") -> tuple[int, dict | None]:
    """The largest per-device batch (a multiple of 8 from 16 up) whose compile fits, from a
    linear fit of memory vs batch (secant), verified by compiles and bracketed by bisection.
    Returns (per-device batch, its summary) — (0, None) when not even 1 fits."""
    def run(per_device):
        c = json.loads(json.dumps(config_dict))
        c["batch_size"] = per_device * shards
        log(f"  compiling per-device batch {per_device} (global {per_device * shards}) ...")
        s = summarise(compile_once(c, topology, timeout, opt_state_sharding=opt_state_sharding), headroom,
                      c["batch_size"])
        log(f"    {s['total_per_chip_gib']:.2f} GiB per chip of {s['usable_per_chip_gib']:.2f} usable: "
            f"{'fits' if s['fits'] else 'does not fit'}")
        return s

    b0 = first["batch_size"] // shards
    points = {b0: first}
    lo, hi = (b0, None) if first["fits"] else (0, b0)
    # first guess: the batch-dependent part (all but the state) scales with the batch
    fixed = first["arguments_per_chip_gib"] - first["batch_per_chip_gib"] + first["code_per_chip_gib"]
    room = first["usable_per_chip_gib"] - fixed
    scale = room / max(first["total_per_chip_gib"] - fixed, 1e-9)
    if first["fits"]:
        b1 = max(b0 + 1, min(int(b0 * scale * 0.95), b0 * 8))
    else:
        b1 = max(1, min(int(b0 * scale * 0.9), b0 - 1))
    b1 = max(1, b1 // _granule(b1) * _granule(b1))
    compiles = 0
    while compiles < max_compiles:
        if b1 not in points:
            points[b1] = run(b1)
            compiles += 1
        s = points[b1]
        if s["fits"]:
            lo = max(lo, b1)
        else:
            hi = b1 if hi is None else min(hi, b1)
        if hi is not None and hi - lo <= _granule(lo or 1):
            break
        xs = sorted(points)
        # secant through the two points nearest the limit
        near = sorted(xs, key=lambda x: abs(points[x]["total_per_chip_gib"] - first["usable_per_chip_gib"]))[:2]
        x0, x1 = sorted(near)
        y0, y1 = points[x0]["total_per_chip_gib"], points[x1]["total_per_chip_gib"]
        limit = first["usable_per_chip_gib"]
        guess = x1 if x1 == x0 or y1 == y0 else x0 + (limit - y0) * (x1 - x0) / (y1 - y0)
        g = _granule(int(guess))
        guess = int(guess) // g * g
        top = hi if hi is not None else max(xs) * 4
        if not (lo < guess < top) or guess in points:
            guess = (lo + top) // 2 if hi is not None else top
            g = _granule(guess)
            guess = max(lo + 1, guess // g * g)
        if guess in points or (hi is not None and guess >= hi):
            break
        b1 = guess
    best = max((x for x, s in points.items() if s["fits"]), default=0)
    return best, points.get(best)
