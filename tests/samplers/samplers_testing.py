"""Shared reference systems and the MCSE assertion of the samplers tests (see README.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import seed_offset
from scipy import integrate, optimize

import samplers


def assert_within_mcse(draws, exact, k: float, what: str) -> None:
    """Assert ``|mean(draws) − exact| < k · MCSE`` elementwise, MCSE from ArviZ's bulk ESS.

    Args:
        draws: Per-draw values of a statistic, shape ``(chain, draw, *event)``.
        exact: The exact expectation, shape ``event``.
        k: Number of standard errors allowed.
        what: Name of the statistic, for the failure message.
    """
    draws = np.asarray(draws, dtype=float)
    exact = np.asarray(exact, dtype=float)
    estimate = draws.mean(axis=(0, 1))
    mcse = samplers.mcse_mean(draws)
    # An MCSE of exactly 0 only arises for a constant statistic, whose estimate is exact.
    error = np.abs(estimate - exact)
    ok = (error < k * mcse) | (error < 1e-12)
    if not np.all(ok):
        worst = np.unravel_index(
            np.argmax(np.where(ok, 0, error / np.maximum(mcse, 1e-300))), ok.shape
        )
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {ok.size} elements off by more than {k} MCSE; "
            f"worst at {worst}: estimate {estimate[worst]!r}, exact {exact[worst]!r}, "
            f"MCSE {mcse[worst]!r}, ESS {samplers.ess_bulk(draws)[worst]!r}."
        )


# --- Gaussian: E(s) = ½ sᵀ A s − bᵀ s -------------------------------------------------------

GAUSSIAN_A = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
GAUSSIAN_B = np.array([1.0, -0.5, 0.25])


def gaussian_energy(position, context):
    """``½ sᵀ A s − bᵀ s`` with ``context = (A, b)``."""
    matrix, vector = context
    return 0.5 * position @ matrix @ position - vector @ position


GAUSSIAN_TEMPERATURE = 0.5


GAUSSIAN_SCALES = ((1.0, 1.0), (1.5, -1.0), (2.0, 0.5), (0.8, 2.0))


def batched_gaussian_nuts():
    """NUTS on four Gaussian targets ``(c A, d b)``, 2 chains each, at T = 0.5, one call.

    ``(c, d)`` runs over :data:`GAUSSIAN_SCALES`. With 4 devices the targets are sharded.

    Returns:
        ``(trace, a, b)`` with ``trace.samples`` of shape ``(4, 2, 1000, 3)``.
    """
    a = np.stack([c * GAUSSIAN_A for c, _ in GAUSSIAN_SCALES])
    b = np.stack([d * GAUSSIAN_B for _, d in GAUSSIAN_SCALES])
    kernel = samplers.nuts(gaussian_energy, num_warmup=300)
    start = jnp.zeros((4, 2, 3)).at[:, :, 0].set(jnp.array([-2.0, 2.0]))
    trace = samplers.sample(
        jax.random.key(11),
        kernel,
        start,
        (a, b),
        GAUSSIAN_TEMPERATURE,
        num_samples=1000,
        batched=True,
    )
    return trace, a, b


# --- Ising on a random graph, and a layered (bipartite-chain) network -----------------------


@seed_offset.fixed
def random_ising(num_spins: int = 7, seed: int = 0, density: float = 0.6):
    """Couplings J (symmetric, zero diagonal, ~density of edges, N(0, 0.6²)) and fields h."""
    rng = np.random.default_rng(seed)
    couplings = rng.normal(0.0, 0.6, (num_spins, num_spins)) * (
        rng.random((num_spins, num_spins)) < density
    )
    couplings = np.triu(couplings, 1)
    couplings = couplings + couplings.T
    fields = rng.normal(0.0, 0.4, num_spins)
    return couplings, fields


def ising_energy(position, context):
    """``E(s) = −½ sᵀ J s − hᵀ s`` with ``context = (J, h)``, J symmetric with zero diagonal."""
    couplings, fields = context
    return -0.5 * position @ couplings @ position - fields @ position


LAYER_SIZES = (3, 4, 3)


@seed_offset.fixed
def layered_network(seed: int = 1):
    """Couplings of a 3-4-3 layered network (only adjacent layers couple), fields, blocks."""
    rng = np.random.default_rng(seed)
    n = sum(LAYER_SIZES)
    bounds = np.cumsum((0, *LAYER_SIZES))
    couplings = np.zeros((n, n))
    for a in range(len(LAYER_SIZES) - 1):
        block = rng.normal(0.0, 0.5, (LAYER_SIZES[a], LAYER_SIZES[a + 1]))
        couplings[bounds[a] : bounds[a + 1], bounds[a + 1] : bounds[a + 2]] = block
    couplings = couplings + couplings.T
    fields = rng.normal(0.0, 0.3, n)
    blocks = tuple(tuple(range(bounds[a], bounds[a + 1])) for a in range(len(LAYER_SIZES)))
    return couplings, fields, blocks


def spin_statistics(samples):
    """Per-draw spins and pair products ``s_i s_j`` (i < j), ``(chain, draw, n + n(n−1)/2)``."""
    samples = np.asarray(samples)
    n = samples.shape[-1]
    i, j = np.triu_indices(n, 1)
    return np.concatenate([samples, samples[..., i] * samples[..., j]], axis=-1)


def exact_spin_statistics(reference):
    """Exact ``⟨s_i⟩`` and ``⟨s_i s_j⟩`` (i < j) in the order of :func:`spin_statistics`."""
    n = reference.mean.shape[0]
    i, j = np.triu_indices(n, 1)
    return np.concatenate([np.asarray(reference.mean), np.asarray(reference.correlation)[i, j]])


# --- Double well: E(x) = h (x² − 1)² + t x ---------------------------------------------------

WELL_HEIGHT = 5.0
WELL_TILT = 0.1


def double_well_energy(position, context):
    """``h (x² − 1)² + t x (+ ½ y²)``; ``context`` is the tilt ``t``; extra coordinates free."""
    x = position[0]
    return WELL_HEIGHT * (x**2 - 1.0) ** 2 + context * x + 0.5 * jnp.sum(position[1:] ** 2)


def double_well_barrier(tilt: float = WELL_TILT) -> float:
    """Position of the barrier top between the two wells (root of E'(x) near 0)."""
    return optimize.brentq(lambda x: 4 * WELL_HEIGHT * x * (x**2 - 1) + tilt, -0.5, 0.5)


def double_well_left_weight(temperature: float, tilt: float = WELL_TILT) -> float:
    """Exact probability of ``x < barrier`` by adaptive quadrature of ``exp(−E/T)``."""
    barrier = double_well_barrier(tilt)

    def density(x):
        return np.exp(-(WELL_HEIGHT * (x**2 - 1) ** 2 + tilt * x) / temperature)

    left = integrate.quad(density, -4.0, barrier, epsabs=0, epsrel=1e-12)[0]
    right = integrate.quad(density, barrier, 4.0, epsabs=0, epsrel=1e-12)[0]
    return left / (left + right)
