"""Key splitting and draws for asynchronous NUTS and HMC's jitter, bit for bit ``jax.random``'s.

NUTS splits keys and draws a Bernoulli variable at every leapfrog step. On CPU, JAX lowers its
Threefry-2x32 hash to a rolled loop (5 iterations of 4 rounds, to keep compilation fast), so
each of those calls is an XLA while loop of a dozen small operations, and they dominate the
cost of a step on small targets. Here the same hash is written out (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", 2011: Threefry-2x32 with 20 rounds), so that it fuses
with the surrounding arithmetic, and ``split`` and ``bernoulli`` are built on it exactly as
JAX builds them for its default ``threefry2x32`` keys with ``jax_threefry_partitionable``
(JAX's default): ``split(key, n)[i]`` is the hash of the counter ``(0, i)`` and a scalar draw
hashes ``(0, 0)``; ``fold_in(key, d)`` is the hash of ``(0, d)``. Keys are handled as their
``uint32[2]`` data. :func:`make_key_ops` checks that the run's keys are of that kind and
otherwise returns ``jax.random``'s own functions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["KeyOps", "make_key_ops"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32-20 of the counters ``(x0, x1)`` under the key ``(k0, k1)`` (uint32)."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _split_fast(data, num: int):
    counts = jnp.arange(num, dtype=jnp.uint32)
    b0, b1 = threefry2x32(data[0], data[1], jnp.zeros_like(counts), counts)
    return jnp.stack([b0, b1], axis=-1)


def _fold_in_fast(data, constant: int):
    b0, b1 = threefry2x32(data[0], data[1], jnp.zeros((), jnp.uint32), jnp.uint32(constant))
    return jnp.stack([b0, b1], axis=-1)


def _uniform_fast(data, dtype):
    finfo = jnp.finfo(dtype)
    nbits, nmant = finfo.bits, finfo.nmant
    zero = jnp.zeros((), jnp.uint32)
    b0, b1 = threefry2x32(data[0], data[1], zero, zero)
    if nbits == 64:
        bits = (b0.astype(jnp.uint64) << np.uint64(32)) | b1.astype(jnp.uint64)
        uint = np.uint64
    elif nbits == 32:
        bits = b0 ^ b1
        uint = np.uint32
    else:
        raise TypeError(f"no fast uniform draws for {dtype}")
    one = np.array(1.0, dtype).view(uint)
    floats = jax.lax.bitcast_convert_type((bits >> uint(nbits - nmant)) | one, dtype)
    # jax.random.uniform then computes max(0, u * (1 - 0) + 0): the same number.
    return floats - jnp.array(1.0, dtype)


def _random_bits_fast(data, nbits: int, shape):
    size = int(np.prod(shape))
    counts = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
    b0, b1 = threefry2x32(data[0], data[1], jnp.zeros_like(counts), counts)
    if nbits == 64:
        return (b0.astype(jnp.uint64) << np.uint64(32)) | b1.astype(jnp.uint64)
    if nbits == 32:
        return b0 ^ b1
    raise TypeError(f"no fast random bits of width {nbits}")


def _normal_fast(data, shape, dtype):
    """``jax.random.normal(key, shape, dtype)``: ``√2 erf⁻¹(u)``, u uniform on (−1, 1)."""
    dtype = jnp.dtype(dtype)
    finfo = jnp.finfo(dtype)
    nbits, nmant = finfo.bits, finfo.nmant
    uint = np.uint64 if nbits == 64 else np.uint32
    bits = _random_bits_fast(data, nbits, shape)
    one = np.array(1.0, dtype).view(uint)
    floats = jax.lax.bitcast_convert_type((bits >> uint(nbits - nmant)) | one, dtype)
    floats = floats - jnp.array(1.0, dtype)
    lo = jnp.asarray(np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype))
    hi = jnp.asarray(np.array(1.0, dtype))
    u = jax.lax.max(lo, floats * (hi - lo) + lo)
    return jax.lax.mul(jnp.asarray(np.array(np.sqrt(2), dtype)), jax.lax.erf_inv(u))


def _bernoulli_fast(data, p=0.5):
    p = jnp.asarray(p, dtype=jax.dtypes.canonicalize_dtype(jnp.result_type(p)))
    return _uniform_fast(data, p.dtype) < p


class KeyOps(NamedTuple):
    """Operations on key data: ``split(data, num) -> (num, 2)``, ``bernoulli(data, p=0.5)``,
    ``uniform(data, dtype)`` (``bernoulli(data, p)`` is ``uniform(data, p.dtype) < p``),
    ``normal(data, shape, dtype)``, ``fold_in(data, constant) -> (2,)``."""

    split: object
    bernoulli: object
    uniform: object
    normal: object
    wrap: object  # uint32 data -> typed key (for functions that take keys)
    fast: bool
    fold_in: object


def make_key_ops(keys: jax.Array) -> KeyOps:
    """The key operations for keys like ``keys`` (typed): the fast ones where they are exact."""
    impl = jax.random.key_impl(keys)

    def wrap(data):
        return jax.random.wrap_key_data(data, impl=impl)

    fast = str(impl) == "threefry2x32" and bool(jax.config.jax_threefry_partitionable)
    if fast:
        return KeyOps(
            _split_fast, _bernoulli_fast, _uniform_fast, _normal_fast, wrap, True, _fold_in_fast
        )

    def split(data, num):
        return jax.random.key_data(jax.random.split(wrap(data), num))

    def bernoulli(data, p=0.5):
        return jax.random.bernoulli(wrap(data), p)

    def uniform(data, dtype):
        return jax.random.uniform(wrap(data), (), dtype)

    def normal(data, shape, dtype):
        return jax.random.normal(wrap(data), shape, dtype)

    def fold_in(data, constant):
        return jax.random.key_data(jax.random.fold_in(wrap(data), constant))

    return KeyOps(split, bernoulli, uniform, normal, wrap, False, fold_in)
