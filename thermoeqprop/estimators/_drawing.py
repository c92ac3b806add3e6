"""Drawing the states of a batch: :func:`draw_states` and what it returns.

Every example of a batch gets its own chains, all of them in one compiled call of
``samplers.sample`` (several devices share the examples); the states come back on one device,
where the statistics of :mod:`thermoeqprop.estimators.thermal` reduce over the examples.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import samplers
from thermoeqprop.estimators._coupled import flat_pairs, pair_betas, pair_positions, paired
from thermoeqprop.estimators._sampling import CONTEXT_AXES, Sampling, _initial_positions, _kernel
from thermoeqprop.models._base import EnergyModel

__all__ = ["ThermalSamples", "at_sampler_dtype", "draw_states", "on_one_device"]


class ThermalSamples(NamedTuple):
    """States drawn at one temperature and nudge, with what the sampler reported.

    Attributes:
        states: (batch, chain, draw, n) states at the target temperature.
        trace: The ``samplers.Trace`` (with every replica when tempering).
        final_positions: Where the chains ended, to continue them in another round.
    """

    states: jax.Array
    trace: Any
    final_positions: jax.Array


def at_sampler_dtype(draw):
    """``draw`` (the signature of :func:`draw_states`), run at ``sampling.dtype``.

    With ``dtype="float32"`` and float64 inputs, the floating inputs (parameters, inputs,
    targets, chain starts) are cast to float32 and the draw is traced and run with 64-bit
    types off, so that every array the samplers make (NumPyro's step size and mass matrix
    among them) is float32; the states, the trace's samples and the final positions come back
    in the inputs' dtype. Otherwise ``draw`` runs as it is.
    """

    signature = inspect.signature(draw)

    def cast(tree, dtype):
        return jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
        )

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        back = jnp.result_type(given["x"])
        if given["sampling"].dtype is None or jnp.dtype(given["sampling"].dtype) == back:
            return draw(*args, **kwargs)
        low = jnp.dtype(given["sampling"].dtype)
        for name in ("params", "x", "targets", "initial_positions"):
            given[name] = cast(given[name], low)
        with jax.enable_x64(False):
            out = draw(*bound.args, **bound.kwargs)
        trace = out.trace._replace(samples=cast(out.trace.samples, back))
        return out._replace(states=cast(out.states, back), trace=trace,
                            final_positions=cast(out.final_positions, back))  # fmt: skip

    return drawn


@at_sampler_dtype
def draw_states(
    model: EnergyModel,
    sampling: Sampling,
    params,
    x,
    targets,
    beta: float,
    temperature: float,
    rng_key,
    initial_positions=None,
    nudged: bool = True,
) -> ThermalSamples:
    """Draw states of ``p_β(s | x) ∝ exp(−(E + βC)/T)`` for every example of a batch.

    Args:
        model: The energy model.
        sampling: Sampler settings.
        params: Parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs) (unused when ``beta`` is 0).
        beta: Nudging strength (0 for the free phase), or a pair ``(β₁, β₂)``: then both
            phases run as coupled pairs of chains with common random numbers
            (:func:`~thermoeqprop.estimators._coupled.paired`), ``states`` are
            (batch, chain, draw, 2, n) and ``initial_positions`` (batch, chain, 2n).
        temperature: T > 0, or an increasing ladder (R,) of temperatures: then one parallel-
            tempering run samples every rung (``sampling.tempering`` is set to R), the
            returned ``states`` are those of the first rung and ``trace.samples`` holds all
            rungs as (batch, chain, draw, R, n), so one run can serve a temperature sweep.
        rng_key: PRNG key.
        initial_positions: Chain starts (batch, chain[, replica], n); default: over-dispersed
            around the model's initial state (random spins for spin models).
        nudged: Sample ``E + βC`` (the default); False samples ``E`` alone and needs
            ``beta == 0``: the same law without evaluating the cost at every sampler step,
            for estimators that never nudge (a kernel of its own, compiled separately).

    Returns:
        :class:`ThermalSamples`.
    """
    coupled = np.ndim(beta) == 1
    if not nudged and np.any(np.asarray(beta) != 0):
        raise ValueError(
            f"nudged=False samples the free phase only, so beta must be 0, got {beta!r}"
        )
    key_init, key_sample = jax.random.split(rng_key)
    ladder = None
    if np.ndim(temperature) == 1:
        ladder = np.asarray(temperature, dtype=float)
        if ladder.size < 2 or not np.all(np.isfinite(ladder)) or not np.all(ladder > 0):
            raise ValueError(
                f"a temperature ladder needs ≥ 2 finite temperatures > 0, got {ladder}"
            )
        if not np.all(np.diff(ladder) > 0):
            raise ValueError(f"a temperature ladder must be strictly increasing, got {ladder}")
        sampling = dataclasses.replace(sampling, tempering=len(ladder))
        temperature = float(ladder[0])
    if coupled and sampling.tempering:
        raise ValueError("coupled phases (a pair of betas) need one temperature, no tempering")
    batch = x.shape[0]
    # The parameters are shared by every example (CONTEXT_AXES): one copy, so the chains'
    # energies and gradients batch into matrix products over all examples and chains.
    if coupled:
        # Both phases start from the same noise (one key) around their own starts.
        context = (params, x, targets, pair_betas(beta, batch, x.dtype))
        if initial_positions is None:
            initial_positions = pair_positions(*(_initial_positions(
                model, sampling, x, key_init, params, targets, b, temperature,
                (params, x, targets, jnp.full((batch,), b, dtype=x.dtype)), nudged,
            ) for b in beta))  # fmt: skip
    else:
        context = (params, x, targets, jnp.full((batch,), beta, dtype=x.dtype))
    if initial_positions is None:
        initial_positions = _initial_positions(
            model, sampling, x, key_init, params, targets, beta, temperature, context, nudged
        )
    if ladder is None:
        ladder = temperature
        if sampling.tempering:
            ladder = samplers.geometric_ladder(
                temperature, sampling.tempering_max_ratio * temperature, sampling.tempering
            )
    ladder = jnp.asarray(ladder, dtype=x.dtype)
    kernel = _kernel(model, sampling, nudged)
    trace = samplers.sample(
        key_sample,
        paired(kernel) if coupled else kernel,
        initial_positions,
        context,
        ladder,
        num_samples=sampling.num_samples,
        num_warmup=sampling.num_warmup,
        batched=True,
        context_axes=CONTEXT_AXES,
    )
    states = trace.samples[..., 0, :] if sampling.tempering else trace.samples
    final = trace.final_state.position
    return ThermalSamples(on_one_device(states), trace, flat_pairs(final) if coupled else final)


def on_one_device(states):
    """States sampled over several devices (``samplers.sample`` shards the examples), gathered
    on the default one: the statistics reduce over examples, and partitioned they ran at half
    the speed of one device's (measured on 2 CPU devices: 15 + 30 ms against 9 + 15 ms).
    Also the heat-bath innovations; None passes through."""
    if states is None or isinstance(states, jax.core.Tracer) or len(states.sharding.device_set) < 2:
        return states
    return jax.device_put(states, jax.local_devices()[0])
