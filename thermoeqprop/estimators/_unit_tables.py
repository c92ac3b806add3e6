r"""Thermal moments of one unit of a layered continuous network given its field.

In the Scellier–Bengio energy a unit ``s`` of layer k enters only through
``½ s² − u ρ(s)``, where the *field* ``u = ρ(s_{k−1}) W_{k−1} + W_k ρ(s_{k+1}) + b_k`` depends
on the neighbouring layers alone. So, given its neighbours, the unit follows the
one-dimensional law

.. math::
    p(s \mid u) ∝ \exp\!\big(−(\tfrac12 s^2 − u\,ρ(s)) / T\big),

and the units of a layer are independent. Its moments ``m_k(u) = E[ρ(s)^k | u]`` are the
continuous counterpart of ``tanh(field / T)`` for a ±1 spin (docs/mathematics.md,
"Conditional expectations"). For the linear activation the law is ``N(u, T)`` and the
moments are closed form; for bounded activations (sigmoid, tanh) this module tabulates them
once per temperature on a uniform grid of fields, by the trapezoid rule on a grid of ``s``
fine against the law's width (its error is below 1e-12 there), and interpolates them by cubic
Hermite polynomials whose slopes are exact:

.. math::
    \frac{d m_k}{du} = \frac{m_{k+1} − m_k m_1}{T}.

The grid step is ``0.0125 √T`` (at most 0.05), which keeps the interpolation error below
1e-10 for these activations (tested against direct quadrature). The numbers of fields and of
values of ``s`` are rounded up to powers of two, at least 4,096 and 1,024: the fields' grid
then reaches beyond the bound asked for, and tables at nearby temperatures and bounds share
one shape, so the jitted code that reads them
(a sampled estimator's statistics, collapsed HMC) compiles once for them, not once per
temperature (T = 0.002–0.01 covering fields up to 4: two shapes, where the exact counts gave
five).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MOMENT_ORDERS",
    "UnitFreeEnergy",
    "UnitMoments",
    "field_bound",
    "unit_free_energy",
    "unit_moments",
]

#: The moments ``E[ρ^k | u]`` the estimators read, k = 1, 2, 3.
MOMENT_ORDERS = 3

# Bounded activations and the bound on |ρ| (the tables' range of s follows from it).
_BOUNDED = {"sigmoid": 1.0, "tanh": 1.0}
_MAX_POINTS = 2**17
# Fewest fields and values of s a table holds (both counts are rounded up to powers of two).
_LEAST_FIELDS, _LEAST_S = 2**12, 2**10


def _bucketed(count: int, least: int) -> int:
    """``count`` rounded up to a power of two, and at least ``least``."""
    return max(least, 1 << (count - 1).bit_length())


class UnitMoments(NamedTuple):
    """Tabulated ``m_1, m_2, m_3`` of a unit with field u, or the closed form (linear ρ).

    Attributes:
        start: The first field of the grid (a scalar array), or None for the closed form.
        step: The grid step (a scalar array); the closed form keeps the temperature here.
        coefficients: (G − 1, 3, 4) the cubic of each moment on each interval of the grid
            (:func:`_cubics`), or None.
    """

    start: jax.Array | None
    step: jax.Array
    coefficients: jax.Array | None

    def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(m_1, m_2, m_3)`` at fields ``u`` (any shape), each shaped like ``u``."""
        if self.coefficients is None:  # ρ(s) = s: the law is N(u, T)
            t = self.step
            return u, u**2 + t, u**3 + 3 * t * u
        return tuple(_hermite(self, u, k) for k in range(MOMENT_ORDERS))


class UnitFreeEnergy(NamedTuple):
    """The free energy ``f(u) = −T log Z(u)`` of one unit with field u, up to a constant,
    ``Z(u) = ∫ exp(−(½ s² − u ρ(s)) / T) ds``: tabulated, or the closed form (linear ρ).

    Its slope is exact, ``f′(u) = −m₁(u)``, so the cubic Hermite interpolant is C¹ and its
    derivative (by autodiff) is what HMC on a collapsed marginal integrates
    (docs/mathematics.md, "Collapsed sampling").

    Attributes:
        start: The first field of the grid (a scalar array), or None for the closed form.
        step: The grid step (a scalar array).
        coefficients: (G − 1, 1, 4) the cubic of ``f`` on each interval of the grid
            (:func:`_cubics`, from the free energies and their exact slopes ``−m₁``), or None.
    """

    start: jax.Array | None
    step: jax.Array
    coefficients: jax.Array | None

    def __call__(self, u: jax.Array) -> jax.Array:
        """``f(u)`` at fields ``u`` (any shape), shaped like ``u``."""
        if self.coefficients is None:  # ρ(s) = s: Z(u) = √(2πT) exp(u²/2T)
            return -0.5 * u**2
        return _hermite(self, u, 0)


def _cubics(values: jax.Array, slopes: jax.Array, step: float) -> jax.Array:
    """The cubic Hermite interpolant of (G, k) ``values`` with exact ``slopes`` on a grid of
    ``step``, as (G − 1, k, 4) coefficients ``c`` of ``Σ_j c_j t^j`` on each interval
    (``t ∈ [0, 1]`` from its left end): an evaluation reads four numbers of one interval and
    takes three multiply-adds (Horner), where the Hermite basis read two nodes' values and
    slopes and weighted them by four cubics. On a CPU the table look-ups are most of a
    collapsed HMC gradient: 64 chains' gradients of the main job's marginal took 35 µs
    against 46–59 µs (float64, one device)."""
    v0, v1 = values[:-1], values[1:]
    d0, d1 = step * slopes[:-1], step * slopes[1:]
    return jnp.stack([v0, d0, 3 * (v1 - v0) - 2 * d0 - d1, 2 * (v0 - v1) + d0 + d1], axis=-1)


def _hermite(table, u, k):
    """Column k of a table's cubic Hermite interpolant at ``u`` (clamped to the grid). Four
    scalar look-ups: a gather of the interval's row of four (…, 4) ran slower in XLA on a
    CPU, and one of all columns at once (…, k, 4) kept the unread ones alive."""
    size = table.coefficients.shape[0] + 1
    z = jnp.clip((u - table.start) / table.step, 0.0, size - 1.0)
    i = jnp.minimum(jnp.floor(z).astype(jnp.int32), size - 2)
    t = z - i
    c = table.coefficients
    return c[i, k, 0] + t * (c[i, k, 1] + t * (c[i, k, 2] + t * c[i, k, 3]))


def field_bound(params, x, activation: str) -> float:
    """The largest |field| any unit of a layered network can see, for inputs ``x``.

    Bounded activations keep ``|ρ| ≤ 1``, so layer k's field is at most
    ``|ρ(s_{k−1}) W_{k−1}| + Σ_j |W_k[i, j]| + |b_k|`` with the inputs' exact product in the
    first layer. Host-side (one transfer); only bounded activations need it.
    """
    return float(_largest_field(params["weights"], params["biases"], x))


@jax.jit  # one program per shape, not a dozen single operations run one by one
def _largest_field(weights, biases, x):
    bound = 0.0
    for k, b in enumerate(biases):
        if k == 0:
            below = jnp.max(jnp.abs(x @ weights[0]), axis=0)
        else:
            below = jnp.sum(jnp.abs(weights[k]), axis=0)
        above = jnp.sum(jnp.abs(weights[k + 1]), axis=1) if k + 1 < len(weights) else 0.0
        bound = jnp.maximum(bound, jnp.max(below + above + jnp.abs(b)))
    return bound


def unit_moments(activation: str, temperature: float, bound: float = 0.0, dtype=float):
    """The moments ``E[ρ(s)^k | u]``, k = 1, 2, 3, of one unit at ``temperature``.

    Args:
        activation: ``"sigmoid"``, ``"tanh"`` or ``"linear"`` (closed form).
        temperature: T > 0.
        bound: Largest |field| to cover (:func:`field_bound`, at least 4); the grid holds a
            power of two of points and reaches as far as they do (:func:`_covered`), so that
            a training run builds few tables. Fields beyond the table are clamped to its
            ends, which the bound rules out.
        dtype: Float dtype of the tables.

    Returns:
        A :class:`UnitMoments`, callable on an array of fields.
    """
    temperature = float(temperature)
    if activation == "linear":
        return UnitMoments(None, jnp.asarray(temperature, dtype), None)
    return _tables(activation, temperature, _covered(activation, bound, temperature),
                   jnp.dtype(dtype).name)[0]  # fmt: skip


def unit_free_energy(activation: str, temperature: float, bound: float = 0.0, dtype=float):
    """The free energy ``f(u) = −T log Z(u)`` of one unit at ``temperature`` (up to a
    constant), on the grid of :func:`unit_moments` (the same arguments).

    Returns:
        A :class:`UnitFreeEnergy`, callable on an array of fields.
    """
    temperature = float(temperature)
    if activation == "linear":
        return UnitFreeEnergy(None, jnp.asarray(temperature, dtype), None)
    return _tables(activation, temperature, _covered(activation, bound, temperature),
                   jnp.dtype(dtype).name)[1]  # fmt: skip


def _step(temperature: float) -> float:
    """The grid step of the fields, ``0.0125 √T`` and at most 0.05."""
    return min(0.05, 0.0125 * math.sqrt(temperature))


def _covered(activation, bound, temperature):
    """The half-width of the fields' grid for fields up to ``bound`` (at least 4): the grid of
    step :func:`_step` whose number of points is the power of two that holds ``±bound``, as
    wide as those points reach. A training run's growing couplings then change the table's
    shape, and so recompile the code that reads it, only when the bound outgrows the grid
    (at T = 0.02 a bound of 15.2 gets a grid of 2¹⁵ points covering ±29.0)."""
    if activation not in _BOUNDED:
        raise ValueError(
            f"conditional moments need activation 'sigmoid', 'tanh' or 'linear', got {activation!r}"
        )
    step = _step(temperature)
    size = int(math.ceil(2 * max(bound, 4.0) / step)) + 1
    if size > _MAX_POINTS:
        raise ValueError(
            f"fields up to {bound:g} at T = {temperature:g} need {size} table points (more "
            f"than {_MAX_POINTS}); the couplings are too large for conditional expectations: "
            "pass rao_blackwell=False"
        )
    return (_bucketed(size, _LEAST_FIELDS) - 1) * step / 2


@functools.lru_cache(maxsize=32)
def _tables(activation: str, temperature: float, covered: float, dtype: str):
    from thermoeqprop.models.layered import ACTIVATIONS

    rho = ACTIVATIONS[activation]
    step = _step(temperature)
    size = int(round(2 * covered / step)) + 1
    # Mass of p(s | u) lies where ½ s² ≤ 2 |u| R + 40 T (|ρ| ≤ R), i.e. |s| ≤ s_max.
    reach = _BOUNDED[activation]
    s_max = math.sqrt(4 * covered * reach + 80 * temperature) + 1.0
    s_step = math.sqrt(temperature) / 10
    s = np.linspace(-s_max, s_max, _bucketed(int(math.ceil(2 * s_max / s_step)) + 1, _LEAST_S))
    fields = np.linspace(-covered, covered, size)
    values, slopes, free = _tabulate(rho, temperature, jnp.asarray(fields), jnp.asarray(s))
    dt = jnp.dtype(dtype)
    moments, energies = _cubics(values, slopes, step), _cubics(free, -values[:, :1], step)
    start, step = jnp.asarray(-covered, dt), jnp.asarray(step, dt)
    return (
        UnitMoments(start, step, moments.astype(dt)),
        UnitFreeEnergy(start, step, energies.astype(dt)),
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _tabulate(rho, temperature, fields, s):
    r = rho(s)
    powers = jnp.stack([r**k for k in range(1, MOMENT_ORDERS + 2)])  # (4, S)

    def moments(u):
        phi = 0.5 * s**2 - u * r
        least = jnp.min(phi)
        w = jnp.exp(-(phi - least) / temperature)
        total = jnp.sum(w)
        # f = −T log Σ exp(−φ/T), the trapezoid sum without its constant factor ds
        return jnp.append(powers @ w / total, least - temperature * jnp.log(total))

    m = jax.lax.map(moments, fields, batch_size=256)  # (G, 5)
    slopes = (m[:, 1:4] - m[:, :3] * m[:, :1]) / temperature
    return m[:, :MOMENT_ORDERS], slopes, m[:, 4:]
