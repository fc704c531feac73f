"""Mesh from config, logical-axis rules, and the shardings of a pytree.

Models name their axes logically ("embed", "mlp", "heads", "batch", ...); a rule table maps
those names onto the mesh axes ("data", "fsdp", "tensor"). Changing parallelism is changing
the mesh sizes or the rules, never the model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clipjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Data parallel over (data, fsdp); parameters sharded over fsdp on their embedding axis and
# over tensor on their heads / mlp axes (Megatron-style). Unknown names are replicated.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("norm", None),
    ("proj", None),
    ("embed_out", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve one -1 axis so that the product equals the device count."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    known = int(np.prod([s for s in shape if s != -1]))
    if any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    if unknown:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices cannot be split into {dict(zip(MESH_AXES, shape))}")
        shape[unknown[0]] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, {num_devices} available")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence = None) -> Mesh:
    """The (data, fsdp, tensor) mesh. jax.make_mesh lays the axes along the physical torus; when
    it cannot (an axis size that is no product of whole torus axes, e.g. fsdp=8 on v6e-256's
    16x16, or v4's one-device-per-core description) the devices are used in (process, id)
    order instead, with a warning: correct, but collectives may cross more links."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except (NotImplementedError, ValueError, AssertionError) as e:  # v4 per-core devices: AssertionError
        import logging

        logging.getLogger("clipjax").warning(
            "mesh %s does not map onto the device topology (%s); using the devices in (process, id) order",
            dict(zip(MESH_AXES, shape)), " ".join(str(e).split())[:200])
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        return Mesh(np.asarray(ordered, dtype=object).reshape(shape), MESH_AXES, axis_types=axis_types)


def rules_from_config(rules) -> tuple[tuple[str, object], ...]:
    """Config rules are [name, axis] pairs; axis may be None, a mesh axis or a list of them."""
    if rules is None:
        return DEFAULT_RULES
    out = []
    for name, axis in rules:
        out.append((name, tuple(axis) if isinstance(axis, (list, tuple)) else axis))
    return tuple(out)


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of boxed (nn.Partitioned) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
    """Leading axis over the data axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """Into how many parts the global batch is split (the product of its mesh axes)."""
    axes = batch_sharding(mesh, 1, rules).spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
