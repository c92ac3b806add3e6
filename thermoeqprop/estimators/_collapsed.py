r"""Collapsed sampling of layered continuous networks (docs/mathematics.md, "Collapsed sampling").

The free layers of a layered network split into two parity classes: the *kept* class, which
holds the output layer (layers L, L − 2, …), and the *collapsed* class (layers L − 1, L − 3,
…). Given the kept class, every collapsed unit follows the one-dimensional law of
:mod:`thermoeqprop.estimators._unit_tables` in its field ``u``, so integrating the collapsed
units out leaves the exact marginal law of the kept class,

.. math::
    p_β(s_K) ∝ \exp\!\big(−[E_K(s_K) + β C(s_K) + \textstyle\sum_{h ∉ K} f(u_h(s_K))] / T\big),
    \qquad f(u) = −T \log ∫ e^{−(\frac12 s^2 − u ρ(s))/T} ds,

with ``E_K`` the kept layers' own terms (``½‖s_k‖² − b_k·ρ(s_k)``, and ``−x W_0 ρ(s_1)`` if
the first layer is kept). HMC (or NUTS) runs on this low-dimensional marginal (the 10 outputs
of the main job instead of 138 units); the input field ``x W_0`` is computed once per batch.
Nothing else is drawn: the estimators' statistics are the conditional expectations over the
collapsed class given each draw of the kept one (:mod:`thermoeqprop.estimators._conditional`,
one conditioning), whose means are exactly the thermal means.

``f`` is tabulated with the moments (:func:`~thermoeqprop.estimators._unit_tables.
unit_free_energy`, slopes ``−m₁`` exact); its interpolation error, below 1e-10·T per unit, is the
only departure from the exact marginal. The states returned hold the kept units' draws; the
collapsed units' entries are zeros, placeholders that the statistics never read.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import samplers
from thermoeqprop.estimators._conditional import conditional_activation
from thermoeqprop.estimators._coupled import flat_pairs, pair_betas, pair_positions, paired
from thermoeqprop.estimators._drawing import at_sampler_dtype
from thermoeqprop.estimators._mode_jumps import jump_vectors, with_jumps
from thermoeqprop.estimators._unit_tables import field_bound, unit_free_energy
from thermoeqprop.models.layered import LayeredNetwork

__all__ = [
    "CollapsedSamples",
    "check_sampling",
    "classes",
    "collapses",
    "draw_collapsed",
    "kept_units",
    "marginal_energy_fn",
]

# The context of the marginal kernel: (params, input field x W_0, targets, beta, table), and
# with mode jumps the jump vectors (batch, n_kept).
CONTEXT_AXES = (None, 0, 0, 0, None)
JUMP_CONTEXT_AXES = (*CONTEXT_AXES, 0)


class CollapsedSamples(NamedTuple):
    """What :func:`draw_collapsed` returns: the fields of ``thermal.ThermalSamples``.

    Attributes:
        states: (batch, chain, draw, n) states: the kept units' draws, zeros for the
            collapsed units (never drawn).
        trace: The ``samplers.Trace`` of the kept class (positions (…, n_kept)).
        final_positions: Where the chains ended (batch, chain, n_kept).
    """

    states: jax.Array
    trace: Any
    final_positions: jax.Array


def classes(model) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(kept, collapsed)`` layer indices (1 … L, ascending) of a layered continuous network
    whose units have a tabulated one-field law and which has a hidden layer; else None."""
    if model.is_spin or conditional_activation(model) is None:
        return None
    depth = len(model.layer_sizes) - 1
    kept = tuple(range(depth, 0, -2))[::-1]
    collapsed = tuple(range(depth - 1, 0, -2))[::-1]
    return (kept, collapsed) if collapsed else None


@functools.lru_cache(maxsize=64)
def kept_units(model) -> np.ndarray:
    """Indices (int32) in the flat state of the kept class's units, in state order."""
    sizes = model.layer_sizes[1:]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    kept, _ = classes(model)
    # int32 in both precision modes: with x64 off, a numpy int64 index failed JAX 0.10's
    # index normalisation (int64 + int32) after float64 calls on the same model.
    return np.concatenate([np.arange(offsets[k - 1], offsets[k]) for k in kept]).astype(np.int32)


def _blockers(estimator) -> list[str]:
    """Why ``estimator`` cannot sample collapsed (empty if it can)."""
    if estimator.model.is_spin:
        return _spin_blockers(estimator)
    sampling, reasons = estimator.sampling, []
    if classes(estimator.model) is None:
        reasons.append(
            "a layered continuous network with a hidden layer and a 'sigmoid', 'tanh' or "
            f"'linear' activation (got {type(estimator.model).__name__})"
        )
    if estimator.rao_blackwell is False:
        reasons.append("conditional expectations (got rao_blackwell=False)")
    if estimator.control_variates is not None:
        reasons.append(f"control_variates=None (got {estimator.control_variates!r})")
    if sampling.tempering:
        reasons.append(f"one temperature (got tempering={sampling.tempering})")
    if sampling.start == "annealed":
        reasons.append("start 'auto', 'relaxed' or 'dispersed' (got 'annealed')")
    return reasons


def _spin_blockers(estimator) -> list[str]:
    """Why a spin network's ``estimator`` cannot sample one class from its marginal
    (``samplers.layered_collapsed_gibbs``)."""
    model, sampling, reasons = estimator.model, estimator.sampling, []
    sizes = model.ising_layer_sizes
    if sizes is None or len(sizes) < 2 or not model.multilinear:
        reasons.append(
            "a layered spin network (SpinNetwork.layered or LayeredSpinNetwork) with at least "
            f"two free layers and the squared-error cost (got {type(model).__name__}"
            + (f" with free layers {tuple(sizes)}" if sizes is not None else "")
            + ")"
        )
    if estimator.rao_blackwell is False:
        reasons.append("conditional expectations (got rao_blackwell=False)")
    if sampling.method not in ("auto", "gibbs"):
        reasons.append(f"method 'auto' or 'gibbs' (got {sampling.method!r})")
    if sampling.tempering:
        reasons.append(f"one temperature (got tempering={sampling.tempering})")
    if sampling.start == "annealed":
        reasons.append("start 'auto' or 'dispersed' (got 'annealed')")
    if estimator.coupled:
        reasons.append("independent phases (got coupled=True)")
    return reasons


def check_sampling(estimator) -> None:
    """The estimators' check of their :class:`Sampling`: the method against the model, and
    ``collapse`` (None, True or False; True only where :func:`collapses` can hold)."""
    sampling = estimator.sampling
    sampling.resolve_method(estimator.model)
    if sampling.collapse is True and (reasons := _blockers(estimator)):
        raise ValueError(
            "Sampling(collapse=True) needs " + "; ".join(reasons) + ": pass collapse=None "
            "(collapsed wherever possible) or False"
        )
    if sampling.method == "importance":
        reasons = _blockers(estimator)
        if sampling.collapse is False:
            reasons.append("collapse None or True (got collapse=False)")
        if sampling.mode_jumps:
            reasons.append("no mode jumps, a Markov chain's move (got mode_jumps=True)")
        if getattr(estimator, "coupled", False):
            reasons.append("independent phases (got coupled=True)")
        if reasons:
            raise ValueError(
                "Sampling(method='importance') draws collapsed sampling's kept class and needs "
                + "; ".join(reasons)
                + ": or use method 'hmc' or 'nuts'"
            )


def collapses(estimator) -> bool:
    """Whether ``estimator`` samples the kept class from its marginal: ``collapse=True``, or
    None (the default) wherever it can for a continuous network (:func:`check_sampling` names
    what it needs); spin networks only with ``collapse=True``."""
    collapse = estimator.sampling.collapse
    if estimator.model.is_spin:
        return collapse is True and not _blockers(estimator)
    return collapse is not False and not _blockers(estimator)


def _rho(model):
    return model.rho if isinstance(model, LayeredNetwork) else (lambda s: s)


@functools.lru_cache(maxsize=64)
def marginal_energy_fn(model, nudged: bool = True):
    """``energy_fn(position, context)`` of the kept class's marginal (module docstring), for
    the samplers: ``position`` (n_kept,), context ``(params, x W_0, target, beta, table)``
    with ``table`` a :class:`~thermoeqprop.estimators._unit_tables.UnitFreeEnergy`;
    ``nudged=False`` leaves out ``β C`` (the free phase without evaluating the cost)."""
    sizes = model.layer_sizes[1:]
    depth = len(sizes)
    kept, collapsed = classes(model)
    rho = _rho(model)

    def energy_fn(position, context):
        params, input_field, target, beta, table = context[:5]  # a sixth leaf: mode jumps
        weights, biases = params["weights"], params["biases"]
        acts, energy, start = {}, 0.0, 0
        for k in kept:
            s = position[start : start + sizes[k - 1]]
            start += sizes[k - 1]
            acts[k] = rho(s)
            field = biases[k - 1] + input_field if k == 1 else biases[k - 1]
            energy = energy + 0.5 * s @ s - field @ acts[k]
        for h in collapsed:
            u = biases[h - 1] + (input_field if h == 1 else acts[h - 1] @ weights[h - 1])
            if h < depth:
                u = u + weights[h] @ acts[h + 1]
            energy = energy + jnp.sum(table(u))
        if nudged:
            energy = energy + beta * model.cost(acts[depth], target)
        return energy

    return energy_fn


@functools.lru_cache(maxsize=64)
def _marginal_kernel(model, sampling, nudged: bool, jumps: bool = False) -> samplers.Kernel:
    energy_fn = marginal_energy_fn(model, nudged)
    if sampling.resolve_method(model) == "nuts":
        kernel = samplers.nuts(energy_fn, num_warmup=sampling.num_warmup)
    else:
        kernel = samplers.hmc(energy_fn, num_warmup=sampling.num_warmup,
                              num_steps=sampling.hmc_steps, trajectory_length=None,
                              jitter=float(sampling.hmc_jitter))  # fmt: skip
    return with_jumps(kernel, energy_fn) if jumps else kernel


@functools.partial(jax.jit, static_argnums=0)
def _relaxed_kept(model, params, x, targets, beta):
    from thermoeqprop.estimators.zero_temperature import Relaxation, relax

    start = model.initial_state(x)
    state = relax(model, params, x, targets, beta, start, Relaxation(tolerance=1e-6)).state
    return state[:, kept_units(model)]


def _starts(model, sampling, params, x, targets, beta, temperature, rng_key, relaxed=None):
    """Chain starts (batch, chain, n_kept): the kept part of the T = 0 relaxation's minimum
    (``relaxed`` if given) jittered by ``init_scale·√T`` (``"relaxed"``, the default), or
    ``init_scale`` noise around the model's initial state (``"dispersed"``)."""
    if sampling.resolve_start(model) == "relaxed":
        base = relaxed if relaxed is not None else _relaxed_kept(model, params, x, targets, beta)
        scale = sampling.init_scale * np.sqrt(temperature)
    else:
        base = model.initial_state(x)[:, kept_units(model)]
        scale = sampling.init_scale
    shape = (x.shape[0], sampling.num_chains, base.shape[-1])
    return base[:, None, :] + scale * jax.random.normal(rng_key, shape, dtype=base.dtype)


def draw_collapsed(
    model,
    sampling,
    params,
    x,
    targets,
    beta: float,
    temperature: float,
    rng_key,
    initial_positions=None,
    nudged: bool = True,
) -> CollapsedSamples:
    """Draw the kept class of ``p_β(s | x)`` from its marginal, every example of a batch;
    the arguments of ``thermal.draw_states`` (one temperature; ``initial_positions``
    (batch, chain, n_kept))."""
    kept = _draw_kept(model, sampling, params, x, targets, beta, temperature, rng_key,
                      initial_positions, nudged)  # fmt: skip
    # The full states are laid out after the draw, in the inputs' dtype (``sampling.dtype``
    # casts only the kept units' draws back).
    return kept._replace(states=_full_states(model, kept.trace.samples))


@at_sampler_dtype
def _draw_kept(model, sampling, params, x, targets, beta, temperature, rng_key,
               initial_positions=None, nudged=True) -> CollapsedSamples:  # fmt: skip
    """:func:`draw_collapsed` without the full states (``states`` None)."""
    coupled = np.ndim(beta) == 1
    if not nudged and np.any(np.asarray(beta) != 0):
        raise ValueError(
            f"nudged=False samples the free phase only, so beta must be 0, got {beta!r}"
        )
    if np.ndim(temperature) != 0:
        raise ValueError(f"collapsed sampling needs one temperature, got {temperature!r}")
    key_init, key_sample = jax.random.split(rng_key)
    activation = conditional_activation(model)
    bound = field_bound(params, x, activation) if activation != "linear" else 0.0
    table = unit_free_energy(activation, temperature, bound, x.dtype)
    if coupled:
        betas = pair_betas(beta, x.shape[0], x.dtype)
    else:
        betas = jnp.full((x.shape[0],), beta, dtype=x.dtype)
    context = (params, x @ params["weights"][0], targets, betas, table)
    jumps = sampling.mode_jumps
    relaxed = None
    if jumps:
        # Coupled pairs share one jump vector, the free phase's (any fixed d is exact).
        kept = tuple(int(i) for i in kept_units(model))
        vectors, relaxed = jump_vectors(model, kept, params, x, targets, 0.0 if coupled else beta)
        context = (*context, vectors)
    if initial_positions is None and coupled:  # the same noise around each phase's minimum
        initial_positions = pair_positions(
            *(_starts(model, sampling, params, x, targets, b, temperature, key_init) for b in beta)
        )
    elif initial_positions is None:
        initial_positions = _starts(
            model, sampling, params, x, targets, beta, temperature, key_init, relaxed
        )
    kernel = _marginal_kernel(model, sampling, bool(nudged), bool(jumps))
    trace = samplers.sample(
        key_sample,
        paired(kernel) if coupled else kernel,
        initial_positions,
        context,
        jnp.asarray(temperature, dtype=x.dtype),
        num_samples=sampling.num_samples,
        num_warmup=sampling.num_warmup,
        batched=True,
        context_axes=JUMP_CONTEXT_AXES if jumps else CONTEXT_AXES,
    )
    final = trace.final_state.position
    final = flat_pairs(final) if coupled else final
    return CollapsedSamples(None, trace, final)


def _full_states(model, kept):
    """(…, n) states with the kept units' draws in place, on one device (the statistics reduce
    over examples, and partitioned over CPU devices they ran at half speed)."""
    if not isinstance(kept, jax.core.Tracer) and len(kept.sharding.device_set) > 1:
        kept = jax.device_put(kept, jax.local_devices()[0])
    return _scatter(model, kept)


@functools.partial(jax.jit, static_argnums=0)
def _scatter(model, kept):
    full = jnp.zeros(kept.shape[:-1] + (model.state_size,), kept.dtype)
    return full.at[..., kept_units(model)].set(kept)
