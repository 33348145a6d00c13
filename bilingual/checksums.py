"""Exact checksums of array trees: the same value on device (any sharding, any number of processes) and on host.

An array is read as unsigned words in C order (4-byte dtypes as uint32; 2- and 1-byte dtypes as uint16 /
uint8 widened to uint32; bool as 0/1). Its checksum is the pair of sums, in uint32 wraparound arithmetic,
of ``word * ((index * K) | 1)`` for the two constants ``MULTIPLIERS``, ``index`` the word's flat position.
Integer addition modulo 2**32 is associative, so the value is exact whatever the sharding or reduction
order, and the multiplier is odd, so changing any single word changes both sums.

``tree_checksums`` computes jax arrays on their devices (one jitted call, the results replicated) and numpy
arrays on the host; both give identical values. For arrays sharded over several processes it is a
collective: every process must call it with the same tree, and every one gets the same values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MULTIPLIERS = (2654435761, 2246822519)
WORD_TYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32}
HOST_CHUNK = 1 << 22  # words per host pass, bounding the temporaries


def path_name(path) -> str:
    """``bert/embeddings/word_embeddings/embedding``: a tree path's keys (dict keys, attributes, indices)."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path)


def _word_type(dtype, name: str):
    if dtype.itemsize not in WORD_TYPES:
        raise TypeError(f"checksums cover 1-, 2- and 4-byte dtypes; {name} is {dtype}")
    return WORD_TYPES[dtype.itemsize]


def _device_sums(x, name: str):
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    else:
        words = lax.bitcast_convert_type(x, _word_type(x.dtype, name)).astype(jnp.uint32)
    index, stride = jnp.zeros(x.shape, jnp.uint32), 1
    for axis in reversed(range(x.ndim)):
        index = index + lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    return jnp.stack([jnp.sum(words * ((index * jnp.uint32(k)) | jnp.uint32(1)), dtype=jnp.uint32)
                      for k in MULTIPLIERS])


@functools.cache
def _device_fn(names: tuple[str, ...], out_sharding):
    def sums(arrays):
        return [_device_sums(x, name) for x, name in zip(arrays, names)]
    return jax.jit(sums) if out_sharding is None else jax.jit(sums, out_shardings=out_sharding)


def host_sums(x, name: str = "array") -> list[int]:
    """The checksum of a host array, in chunks of ``HOST_CHUNK`` words."""
    flat = np.asarray(x).reshape(-1)
    words = flat.astype(np.uint32) if flat.dtype == np.bool_ else flat.view(_word_type(flat.dtype, name))
    totals = [0] * len(MULTIPLIERS)
    for start in range(0, words.size, HOST_CHUNK):
        chunk = words[start:start + HOST_CHUNK].astype(np.uint32)
        index = np.arange(start, start + chunk.size, dtype=np.uint64).astype(np.uint32)
        for i, k in enumerate(MULTIPLIERS):
            totals[i] = (totals[i] + int(np.sum(chunk * ((index * np.uint32(k)) | np.uint32(1)), dtype=np.uint32)))
    return [t % 2**32 for t in totals]


def tree_checksums(tree) -> dict[str, list[int]]:
    """``{path: [a, b]}`` for every array leaf of ``tree`` (JSON-serialisable)."""
    leaves = [(path_name(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    out = {name: host_sums(leaf, name) for name, leaf in leaves if not isinstance(leaf, jax.Array)}
    on_device = [(name, leaf) for name, leaf in leaves if isinstance(leaf, jax.Array)]
    if on_device:
        meshes = {leaf.sharding.mesh for _, leaf in on_device if isinstance(leaf.sharding, jax.sharding.NamedSharding)}
        replicated = jax.sharding.NamedSharding(meshes.pop(), jax.sharding.PartitionSpec()) if meshes else None
        names = tuple(name for name, _ in on_device)
        sums = _device_fn(names, replicated)([leaf for _, leaf in on_device])
        out.update({name: [int(v) for v in np.asarray(s)] for name, s in zip(names, sums)})
    return out


def mismatches(recorded: dict, tree) -> list[str]:
    """The paths whose checksum in ``tree`` differs from ``recorded`` (or that only one of them has)."""
    actual = tree_checksums(tree)
    return sorted(path for path in recorded.keys() | actual.keys() if recorded.get(path) != actual.get(path))
