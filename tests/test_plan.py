"""plan.py end to end: the real train step compiled for an abstract TPU topology by the real
TPU compiler (libtpu in .tpu-compiler, run in a subprocess), on a tiny config."""

import json
import os
import subprocess
import sys

import pytest

from clipjax.planning import hardware, hlo
from clipjax.planning.run import compiler_available, remat_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_compiler = pytest.mark.skipif(not compiler_available(),
                                    reason="the TPU compiler is not installed in .tpu-compiler (see setup.sh)")


def _plan(tmp_path, *args):
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "plan.py", "--config", "configs/default.py", "--topology", "v5e:2x2",
                        "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return p, (json.loads(out.read_text()) if out.exists() else None)


@needs_compiler
def test_plan_compiles_the_default_step_for_v5e_2x2(tmp_path):
    p, plan = _plan(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    for key in ("topology", "chips", "hbm_per_chip_gib", "total_per_chip_gib", "fits", "flops_per_step",
                "projected_step_s", "projected_mfu", "collectives_per_chip", "remat_events"):
        assert key in plan, key
    assert plan["topology"] == "v5e:2x2" and plan["chips"] == 4 and plan["hbm_per_chip_gib"] == 16
    assert plan["fits"] and 0.01 < plan["total_per_chip_gib"] < 2
    assert plan["temporaries_per_chip_gib"] > 0 and plan["optimizer_per_chip_gib"] > plan["parameters_per_chip_gib"]
    f = plan["flops"]
    # the compiled matmuls (scan bodies x trip counts) agree with the per-layer formula
    assert 0.8 < f["hlo_over_analytic_hardware"] < 1.2
    assert f["xla_cost_analysis"] < f["hlo_matmul_per_step"] * 1.2  # XLA counts each scan body once
    assert 0 < plan["projected_mfu"] < 1 and plan["projected_step_s"] > 0
    assert "fits" in p.stdout and "DOES NOT FIT" not in p.stdout
    assert "INVALID_ARGUMENT" not in p.stderr and "TPU_WORKER_HOSTNAMES" not in p.stderr  # libtpu start-up kept quiet


@needs_compiler
def test_a_config_that_does_not_fit_exits_1_naming_a_per_chip_batch_that_does(tmp_path):
    # 99.3% headroom leaves ~0.11 GiB of the 16: batch 32 per chip (~0.13 GiB) does not fit, ~16 does
    p, plan = _plan(tmp_path, "--headroom", "0.993", "--max-compiles", "2")
    assert p.returncode == 1, p.stderr[-2000:]
    assert not plan["fits"] and 0 < plan["max_per_chip_batch"] < plan["per_chip_batch"]
    assert f"per-chip batch {plan['max_per_chip_batch']:g} fits" in p.stderr
    assert f"--config.batch_size={plan['max_global_batch']}" in p.stderr


def test_plan_without_the_compiler_says_how_to_install_it(tmp_path, monkeypatch):
    from clipjax.planning import run

    monkeypatch.setattr(run, "TPU_COMPILER", str(tmp_path / "missing"))
    with pytest.raises(run.PlanError, match="setup.sh"):
        run.compile_once({}, "v5e:2x2")


def test_hardware_table_and_topology_names():
    assert hardware.num_chips("v5e:16x16") == 256 and hardware.num_chips("v5p:4x4x4") == 64
    assert hardware.chip("v6e:16x16").peak_bf16_flops == 918e12 and hardware.chip("v4:4x4x8").hbm_gib == 32
    with pytest.raises(ValueError):
        hardware.chip("v9:2x2")


HLO = """HloModule m

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (q: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %q = (s32[], f32[8,16]) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%q), index=1
  %w = f32[16,16]{1,0} constant({...})
  %d = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ag = f32[8,64]{1,0} all-gather(%d), dimensions={1}, replica_groups={{0,1,2,3}}
  %i = s32[] get-tuple-element(%q), index=0
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %d)
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[8,16]) tuple(%z, %a)
  %w = (s32[], f32[8,16]) while(%init), condition=%cond, body=%body
  %r = f32[8,16]{1,0} get-tuple-element(%w), index=1
  ROOT %ar = f32[8,16]{1,0} all-reduce(%r), replica_groups={{0,1,2,3}}, to_apply=%cond
}
"""


def test_hlo_counts_loop_bodies_by_their_trip_count():
    r = hlo.analyse(HLO)
    assert r["while_trip_counts"] == [12]
    assert r["matmul_flops"] == 12 * 2 * 8 * 16 * 16 and r["matmul_flops_loop_bodies_once"] == 2 * 8 * 16 * 16
    assert r["collectives"]["all-gather"]["count"] == 12 and r["collectives"]["all-gather"]["bytes"] == 12 * 8 * 64 * 4
    assert r["collectives"]["all-reduce"]["count"] == 1 and r["collectives"]["all-reduce"]["bytes"] == 8 * 16 * 4


def test_remat_events_are_read_from_the_partitioner_warnings():
    line = ("W1203 spmd_partitioner.cc:654] [SPMD] Involuntary full rematerialization. The compiler cannot go from "
            "sharding {devices=[4,1]<=[4]} to {replicated} efficiently for HLO operation %gather = f32[128,16,32]{2,1,0} "
            "gather(%a, %b), metadata={op_name=\"jit(step)/CLIP.encode_text/token_embed\"}. As the last resort")
    ev = remat_events("noise\n" + line + "\n")
    assert len(ev) == 1 and ev[0]["hlo"].startswith("%gather = f32[128,16,32]") and "token_embed" in ev[0]["op_name"]


@needs_compiler
def test_plan_compiles_clipseg_and_ram_over_a_clip_not_trained_yet(tmp_path):
    # both tasks build on a pretrained CLIP; a plan reads only its architecture, here from the
    # CLIP training config (no checkpoint exists); the two compiles run side by side
    jobs = {}
    for name, extra in (("clipseg", ["--config.init_from=configs/clip_shapes.py"]),
                        ("ram", ["--config.ram.clip=configs/clip_shapes.py"])):
        out = tmp_path / f"{name}.json"
        jobs[name] = (out, subprocess.Popen(
            [sys.executable, "plan.py", "--config", f"configs/{name}_shapes.py", "--topology", "v5e:2x2",
             "--json", str(out), *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (out, p) in jobs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
        plan = json.loads(out.read_text())
        assert plan["fits"] and plan["chips"] == 4 and plan["remat_events"] == []
        assert plan["flops_source"].startswith("compiled HLO") and plan["flops_per_step"] > 0
        assert "no analytic formula" in stdout
    seg = json.loads(jobs["clipseg"][0].read_text())
    ram = json.loads(jobs["ram"][0].read_text())
    assert seg["params"] > 3e6 and ram["params"] > 1e6  # the CLIP under CLIPSeg counts; RAM's CLIP is a teacher
