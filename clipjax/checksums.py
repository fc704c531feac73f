"""Checksums of array trees, equal whether computed on sharded device arrays (under jit: each
device reduces its own shard, only two uint32 scalars per array are combined, nothing is
gathered) or on host numpy arrays (clipjax.load).

Per array, two uint32 sums of its bit pattern viewed as unsigned words: the plain sum and the
sum weighted by (2 * flat index + 1), both modulo 2**32. A flipped bit changes the plain sum;
a block overwritten or moved changes the weighted one. They detect corruption, not tampering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MASK = 0xFFFFFFFF


def _uint_view(dtype) -> np.dtype:
    size = np.dtype(dtype).itemsize
    if size not in (1, 2, 4):
        raise ValueError(f"no checksum for {np.dtype(dtype)} arrays ({size}-byte elements)")
    return np.dtype(f"uint{8 * size}")


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= int(n)
    return list(reversed(out))


def device_checksum(x):
    """[plain, weighted] uint32 of a jax array (inside jit; keeps the array's sharding)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    words = jax.lax.bitcast_convert_type(x, _uint_view(x.dtype)).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis, stride in enumerate(_strides(x.shape)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride & _MASK)
    weights = index * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)])


def host_checksum(x) -> list[int]:
    """The same two sums of a host array, as Python ints."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    words = x.view(_uint_view(x.dtype)).astype(np.uint64)
    index = np.arange(x.size, dtype=np.uint64).reshape(x.shape) & _MASK
    weights = (index * 2 + 1) & _MASK
    return [int(words.sum(dtype=np.uint64) & _MASK), int(((words * weights) & _MASK).sum(dtype=np.uint64) & _MASK)]


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


_device_sums = jax.jit(lambda tree: [device_checksum(x) for x in jax.tree_util.tree_leaves(tree)])


def tree_checksums(tree) -> dict[str, list[int]]:
    """{leaf path: [plain, weighted]} of a tree of (possibly sharded) jax arrays, computed on
    the devices holding them."""
    sums = jax.device_get(_device_sums(tree))
    return {p: [int(a), int(b)] for p, (a, b) in zip(_paths(tree), sums)}


def host_tree_checksums(tree) -> dict[str, list[int]]:
    return {p: host_checksum(x) for p, x in zip(_paths(tree), jax.tree_util.tree_leaves(tree))}


def mismatches(expected: dict, got: dict) -> list[str]:
    """Leaf paths whose checksums differ (or that one side lacks)."""
    return sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
