"""Repeated driver calls: batched contexts holding ``None`` nodes, and block Gibbs' energy check.

``samplers.resume_tempering`` passes a whole tempering state as a per-chain context leaf of a
batched call; an HMC state holds ``None`` (no trajectory length), so the driver's
``context_axes`` must treat ``None`` nodes of a context as empty subtrees. And a schedule
optimisation resumes its chains chunk after chunk; block Gibbs with ``check_energy=True``
probes the energy once per energy, blocks and context value, not once per call.
Every check here is exact (equal draws, counts, raised errors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplers
from samplers import _spins

L = 4


def lattice_energy(s, context):
    """Periodic L × L ferromagnet plus ``context · Σ s²`` (not multilinear unless 0)."""
    g = s.reshape(L, L)
    return -jnp.sum(g * (jnp.roll(g, 1, 0) + jnp.roll(g, 1, 1))) + context * jnp.sum(s**2)


def checkerboard() -> tuple[tuple[int, ...], tuple[int, ...]]:
    index = np.arange(L * L).reshape(L, L)
    colour = np.add.outer(np.arange(L), np.arange(L)) % 2
    return tuple(int(i) for i in index[colour == 0]), tuple(int(i) for i in index[colour == 1])


def shifted_energy(position, context):
    scale, own = context
    return 0.5 * scale * jnp.sum((position - own["mean"]) ** 2)


def test_batched_contexts_with_none_nodes_draw_what_the_same_contexts_without_them_draw():
    kernel = samplers.hmc(shifted_energy, num_warmup=20, num_steps=3)
    means = jnp.array([[1.0, -1.0], [0.0, 2.0], [-3.0, 0.5]])
    starts = jnp.zeros((3, 2, 2))
    traces = [
        samplers.sample(
            jax.random.key(40),
            kernel,
            starts,
            (jnp.asarray(2.0), own),
            0.5,
            num_samples=30,
            batched=True,
            context_axes=(None, 0),
        )  # fmt: skip
        for own in ({"mean": means}, {"mean": means, "unused": None, "empty": (None, ())})
    ]
    np.testing.assert_array_equal(traces[0].samples, traces[1].samples)
    assert traces[0].samples.shape == (3, 2, 30, 2)
    # A prefix that names the None node's place works too; one that does not fit is named.
    again = samplers.sample(
        jax.random.key(40), kernel, starts,
        (jnp.asarray(2.0), {"mean": means, "unused": None, "empty": (None, ())}), 0.5,
        num_samples=30, batched=True,
        context_axes=(None, {"mean": 0, "unused": None, "empty": 0}),
    )  # fmt: skip
    np.testing.assert_array_equal(again.samples, traces[0].samples)
    with pytest.raises(ValueError, match="pytree prefix of the context"):
        samplers.sample(
            jax.random.key(40), kernel, starts, (jnp.asarray(2.0), {"mean": means, "x": None}),
            0.5, num_samples=3, batched=True, context_axes=(None, {"mean": 0}),
        )  # fmt: skip


def test_hmc_tempering_resumes_through_a_state_with_none_nodes():
    local = samplers.hmc(lambda x, c: 0.5 * jnp.sum((x - c) ** 2), num_warmup=10, num_steps=3)
    kernel = samplers.parallel_tempering(local)
    ladder = samplers.geometric_ladder(1.0, 4.0, 3)
    first = samplers.sample(
        jax.random.key(41), kernel, jnp.zeros((2, 3, 2)), 0.5, ladder, num_samples=5
    )
    assert None in jax.tree_util.tree_leaves(first.final_state, is_leaf=lambda a: a is None)
    more = samplers.resume_tempering(
        jax.random.key(42), kernel, first.final_state, 0.5, num_samples=4
    )
    np.testing.assert_array_equal(more.final_state.iteration, [19, 19])
    assert more.samples.shape == (2, 4, 3, 2)


def test_block_gibbs_checks_its_energy_once_per_context_value(monkeypatch):
    probes = []
    probe = _spins._spin_energy_probe

    def counted(*args):
        probes.append(args[0])
        return probe(*args)

    monkeypatch.setattr(_spins, "_spin_energy_probe", counted)
    local = samplers.block_gibbs(lattice_energy, checkerboard())  # check_energy=True
    ladder = samplers.geometric_ladder(2.0, 4.0, 4)
    start = jax.random.rademacher(jax.random.key(43), (2, 4, L * L), dtype=float)
    result = samplers.optimise_schedule(
        jax.random.key(44), local, start, 0.0, ladder, num_rounds=3, steps_per_chunk=8
    )  # 1 + 2 + 4 chunks, each a driver call that validates
    one_check = 1 + 2  # the single flips, then one probe per block of two or more units
    assert len(probes) == one_check
    samplers.resume_tempering(
        jax.random.key(45), result.kernel, result.final_state, 0.0, num_samples=8
    )
    samplers.sample(jax.random.key(46), local, start[:, 0], 0.0, 2.0, num_samples=4)
    assert len(probes) == one_check
    # A new context value is checked again, and one that breaks multilinearity is refused.
    with pytest.raises(ValueError, match="not multilinear"):
        samplers.resume_tempering(
            jax.random.key(47), result.kernel, result.final_state, 0.5, num_samples=8
        )
    assert len(probes) == one_check + 1
    with pytest.raises(ValueError, match="not multilinear"):  # refusals are not remembered
        samplers.sample(jax.random.key(48), local, start[:, 0], 0.5, 2.0, num_samples=4)
