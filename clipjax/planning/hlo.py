"""Read a compiled (optimised, SPMD-partitioned) HLO module's text: per-device collective bytes
and matmul FLOPs, each instruction counted as many times as it runs per step.

XLA's own cost analysis counts a `while` body once; a scanned layer stack runs its body N
times. Here every computation gets a multiplicity: ENTRY runs once, a fusion / call /
to_apply runs as often as its caller, a while body (and condition) as often as its caller
times the loop's trip count, read from the condition (`compare(counter, constant(N)),
direction=LT`, which is what `lax.scan` lowers to). A loop whose count cannot be read is
counted once and listed in `unknown_trip_counts`.

Collective bytes are the per-device result bytes of each collective instruction (for
`*-start` async forms, the result minus the operand), with operand bytes beside them. FLOPs
are 2·MACs of every `dot` and `convolution` (the TPU compiler rewrites many dots as
convolutions), from the operand and result shapes.
"""

from __future__ import annotations

import re
from collections import defaultdict

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")

_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
          "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \((.*)\) -> .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = ")
_CALLED = re.compile(r"\b(calls|body|condition|to_apply)=%([^\s,)}]+)")
_CALLED_LIST = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")


def _dims(s: str) -> list[int]:
    return [int(d) for d in s.split(",") if d]


def shape_bytes(type_str: str) -> float:
    """Bytes of every array in an HLO type string (a tuple sums its elements)."""
    total = 0.0
    for dt, dims in _ARRAY.findall(type_str):
        n = 1
        for d in _dims(dims):
            n *= d
        total += n * _BYTES[dt]
    return total


def _split_type(rest: str) -> tuple[str, str]:
    """'TYPE opcode(operands), attrs' -> (TYPE, 'opcode(operands), attrs')."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    i = rest.find(" ")
    return rest[:i], rest[i + 1:]


def _operands(body: str) -> list[str]:
    """Operand names of 'opcode(%a, %b), ...' (top level of the first parenthesis)."""
    start = body.find("(")
    depth, end = 0, len(body)
    for i in range(start, len(body)):
        depth += body[i] == "("
        depth -= body[i] == ")"
        if depth == 0:
            end = i
            break
    return re.findall(r"%([^\s,()]+)", body[start + 1:end])


def parse(text: str) -> dict:
    """{computation: {"entry": bool, "instrs": [(name, type, opcode, body)], "types": {name: type}}}."""
    comps, cur = {}, None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            cur = {"entry": bool(m.group(1)), "instrs": [], "types": {}}
            comps[m.group(2)] = cur
            for pname, ptype in re.findall(r"([^\s:(),]+): ((?:\([^)]*\))|[^,]+)", m.group(3)):
                cur["types"][pname] = ptype
            continue
        if cur is None:
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name = m.group(1)
        typ, body = _split_type(line[m.end():])
        opcode = body.split("(", 1)[0].strip()
        cur["instrs"].append((name, typ, opcode, body))
        cur["types"][name] = typ
    return comps


def _trip_count(cond: dict):
    consts = {}
    for name, typ, op, body in cond["instrs"]:
        if op == "constant":
            m = re.match(r"constant\((-?\d+)\)", body)
            if m:
                consts[name] = int(m.group(1))
    for name, typ, op, body in cond["instrs"]:
        if op == "compare" and "direction=LT" in body:
            for o in _operands(body):
                if o in consts:
                    return consts[o]
    return None


def multiplicities(comps: dict) -> tuple[dict, list]:
    """How many times each computation runs per execution of ENTRY; loops of unknown count."""
    edges = defaultdict(list)  # caller -> [(callee, factor)]
    unknown = []
    for cname, comp in comps.items():
        for name, typ, op, body in comp["instrs"]:
            called = dict((k, v) for k, v in _CALLED.findall(body))
            factor = 1
            if op == "while" and "condition" in called:
                n = _trip_count(comps.get(called["condition"], {"instrs": []}))
                if n is None:
                    unknown.append(name)
                factor = n or 1
            for kind, callee in _CALLED.findall(body):
                edges[cname].append((callee, factor if kind in ("body", "condition") else 1))
            for _, lst in _CALLED_LIST.findall(body):
                for callee in re.findall(r"%([^\s,]+)", lst):
                    edges[cname].append((callee, 1))
    entry = [c for c, v in comps.items() if v["entry"]]
    mult = defaultdict(float)
    order, seen = [], set()

    def visit(c):  # postorder over the call DAG
        if c in seen:
            return
        seen.add(c)
        for callee, _ in edges.get(c, ()):
            visit(callee)
        order.append(c)

    for e in entry:
        visit(e)
        mult[e] = 1.0
    for c in reversed(order):  # callers before callees
        for callee, f in edges.get(c, ()):
            mult[callee] += mult[c] * f
    return dict(mult), unknown


def _window(body: str, key: str, n: int, default: int) -> list:
    m = re.search(key + r"=([\d_x]+)", body)
    if not m:
        return [default] * n
    return [p for p in m.group(1).split("x")]


def _conv_flops(typ: str, body: str, types: dict, ops: list) -> float:
    """2 x the multiply-adds that touch real (not padding, not dilation-hole) inputs."""
    labels = re.search(r"dim_labels=([^_]+)_([^-]+)->(\S+?)[,\s]", body + " ")
    lhs = _ARRAY.findall(types.get(ops[0], "")) if ops else []
    rhs = _ARRAY.findall(types.get(ops[1], "")) if len(ops) > 1 else []
    out = _ARRAY.findall(typ)
    if not (labels and lhs and rhs and out):
        return 0.0
    ll, rl, ol = labels.groups()
    ld, rd, od = _dims(lhs[0][1]), _dims(rhs[0][1]), _dims(out[0][1])
    if not (len(ll) == len(ld) and len(rl) == len(rd) and len(ol) == len(od)):
        return 0.0
    spatial = sorted(ch for ch in ol if ch.isdigit())
    n = len(spatial)
    size = [int(x) for x in _window(body, "size", n, 1)]
    pads = _window(body, "pad", n, "0_0")
    stride = [int(x) for x in _window(body, "stride", n, 1)]
    lhs_d = [int(x) for x in _window(body, "lhs_dilate", n, 1)]
    rhs_d = [int(x) for x in _window(body, "rhs_dilate", n, 1)]
    macs = float(od[ol.index("b")] * od[ol.index("f")] * rd[rl.index("i")])
    for j, ch in enumerate(spatial):
        in_size = ld[ll.index(ch)]
        out_size = od[ol.index(ch)]
        lo = int(str(pads[j]).split("_")[0])
        span = (in_size - 1) * lhs_d[j] + 1
        valid = 0
        for t in range(size[j]):
            for o in range(out_size):
                idx = o * stride[j] + t * rhs_d[j] - lo
                if 0 <= idx < span and idx % lhs_d[j] == 0:
                    valid += 1
        macs *= valid
    return 2.0 * macs


def _matmul_flops(typ: str, op: str, body: str, types: dict) -> float:
    out = _ARRAY.findall(typ)
    if not out:
        return 0.0
    out_elems = 1
    for d in _dims(out[0][1]):
        out_elems *= d
    ops = _operands(body)
    if op == "dot":
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", body)
        lhs = _ARRAY.findall(types.get(ops[0], "")) if ops else []
        if not lhs:
            return 0.0
        ldims = _dims(lhs[0][1])
        k = 1
        for i in _dims(m.group(1)) if m else []:
            k *= ldims[i]
        return 2.0 * out_elems * k
    if op == "convolution":
        return _conv_flops(typ, body, types, ops)
    return 0.0


def analyse(text: str) -> dict:
    """Per-device, per-step: collectives by kind (count, result bytes, operand bytes) and
    matmul FLOPs, each scaled by how often its computation runs; the loops' trip counts."""
    comps = parse(text)
    mult, unknown = multiplicities(comps)
    coll = {k: {"count": 0.0, "bytes": 0.0, "operand_bytes": 0.0} for k in KINDS}
    flops = flops_once = 0.0
    trips = []
    for cname, comp in comps.items():
        m = mult.get(cname, 0.0)
        if not m:
            continue
        for name, typ, op, body in comp["instrs"]:
            if op == "while":
                cond = dict(_CALLED.findall(body)).get("condition")
                trips.append(_trip_count(comps.get(cond, {"instrs": []})))
            base = op[:-6] if op.endswith("-start") else op
            if base in KINDS:
                operand = sum(shape_bytes(comp["types"].get(o, "")) for o in _operands(body))
                result = shape_bytes(typ)
                if op.endswith("-start"):
                    result = max(result - operand, 0.0)
                coll[base]["count"] += m
                coll[base]["bytes"] += m * result
                coll[base]["operand_bytes"] += m * operand
            elif op in ("dot", "convolution"):
                f = _matmul_flops(typ, op, body, comp["types"])
                flops += m * f
                flops_once += f
    return {"collectives": coll, "matmul_flops": flops, "matmul_flops_loop_bodies_once": flops_once,
            "while_trip_counts": trips, "unknown_trip_counts": unknown}
