"""Per-chip figures of the TPU generations plan.py knows (Google Cloud's published specs).

A topology name is "<generation>:<chips per dimension>", e.g. "v5e:16x16" (v5e-256),
"v5p:4x4x4" (v5p-128: 64 chips, 128 TensorCores), "v4:4x4x8" (v4-256: 128 chips),
"v6e:16x16" (v6e-256). v4's topology description has one JAX device per TensorCore (2 per
chip); the others one per chip. Figures are per chip; per device = per chip / cores_per_device.
"""

from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_gib: float  # HBM per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    ici_bytes_per_s: float  # inter-chip interconnect bandwidth per chip (all links, one direction summed)


# https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e (system architecture tables)
CHIPS = {
    "v4": Chip("v4", 32, 275e12, 1200e9, 300e9),
    "v5e": Chip("v5e", 16, 197e12, 819e9, 200e9),
    "v5p": Chip("v5p", 95, 459e12, 2765e9, 600e9),
    "v6e": Chip("v6e", 32, 918e12, 1640e9, 448e9),
}


def generation(topology: str) -> str:
    gen = topology.split(":", 1)[0].lower()
    if gen not in CHIPS:
        raise ValueError(f"unknown TPU generation {gen!r} in topology {topology!r}; known: {', '.join(CHIPS)}")
    return gen


def chip(topology: str) -> Chip:
    return CHIPS[generation(topology)]


def num_chips(topology: str) -> int:
    dims = topology.split(":", 1)[1].lower().split("x")
    n = 1
    for d in dims:
        n *= int(d)
    return n
