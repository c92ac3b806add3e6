"""HMC and NUTS on ``exp(−E(s)/T)`` through NumPyro's functional kernels.

NumPyro does the work: :func:`numpyro.infer.hmc.hmc` builds ``init_kernel``/``sample_kernel``
from a *potential generator* ``(context, temperature) -> (z -> E(z, context) / T)``, so the
potential is rebuilt from traced arguments on every call and one compiled kernel serves every
temperature and every data set. Its warm-up adaptation (dual-averaging step size, Welford
diagonal or dense mass matrix over NumPyro's windowed schedule) runs while
``state.iteration < num_warmup``.

Positions are computed in JAX's default float dtype (float64 with x64 enabled), which
NumPyro's adaptation state uses. This module only wraps NumPyro's state into the package's
form: the state stores the unscaled energy ``E`` and its gradient, and the temperature, and
rebuilds NumPyro's scaled ``potential_energy = E / T`` and ``z_grad = ∇E / T`` at each step.
That makes a change of temperature (parallel tempering swaps, ladder adaptation, annealing) a
change of fields. Plain HMC jitters its step size (or integration time) after warm-up, around
NumPyro's transition, to avoid the resonances of a fixed trajectory length (:func:`hmc`).

Plain HMC's transition is NumPyro's ``sample_kernel`` written out
(:mod:`samplers._hmc_transition`): the same arithmetic and draws, with the Threefry hash of its
three key draws fused into the step and a fixed-length integrator unrolled, which on small
targets makes a transition about 1.4–1.7× faster. NUTS steps through NumPyro's own
``sample_kernel`` (its asynchronous route is :mod:`samplers._nuts_async`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.infer.hmc import HMCState as _NumPyroState
from numpyro.infer.hmc import hmc as _numpyro_hmc

from samplers._base import EnergyFn, Kernel, no_validation
from samplers._hmc_state import HMCInfo, HMCState
from samplers._hmc_transition import hmc_sample_kernel
from samplers._keys import make_key_ops

__all__ = ["HMCInfo", "HMCState", "hmc", "nuts"]


# The fold-in constant of HMC's jitter draws: far above the few keys NumPyro splits a step's
# key into, so the factor's key is never one of NumPyro's.
JITTER_STREAM = 0x6A177E


def _uniform_signed(rng_key: jax.Array, dtype) -> jax.Array:
    """``jax.random.uniform(jax.random.fold_in(rng_key, JITTER_STREAM), (), dtype, −1, 1)``,
    bit for bit, through the written-out Threefry hash where it applies (JAX's CPU lowering
    of the hash is a loop of a dozen operations per call: a fifth of a small HMC step)."""
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        ops = make_key_ops(rng_key)
        if ops.fast:
            unit = ops.uniform(ops.fold_in(jax.random.key_data(rng_key), JITTER_STREAM), dtype)
            return jnp.maximum(jnp.asarray(-1.0, dtype), unit * 2.0 - 1.0)
    key = jax.random.fold_in(rng_key, JITTER_STREAM)
    return jax.random.uniform(key, (), dtype, minval=-1.0, maxval=1.0)


def _build(
    energy_fn: EnergyFn,
    algo: str,
    num_warmup: int,
    init_options: dict[str, Any],
    jitter: float | None = None,
) -> Kernel:
    if not callable(energy_fn):
        raise ValueError(
            f"energy_fn must be callable as energy_fn(position, context), got {energy_fn!r}."
        )
    if not isinstance(num_warmup, int) or num_warmup < 0:
        raise ValueError(f"num_warmup must be an integer >= 0, got {num_warmup!r}.")

    def potential_fn_gen(context: Any, temperature: jax.Array):
        return lambda z: energy_fn(z, context) / temperature

    init_kernel, sample_kernel = _numpyro_hmc(potential_fn_gen=potential_fn_gen, algo=algo)
    if algo == "HMC":  # NumPyro's transition with fast draws and an unrolled integrator
        names = ("num_steps", "target_accept_prob", "adapt_step_size", "adapt_mass_matrix")
        options = {name: init_options[name] for name in (*names, "dense_mass")}
        sample_kernel = hmc_sample_kernel(potential_fn_gen, num_warmup=num_warmup, **options)
    fixed_num_steps = init_options.get("num_steps") is not None
    initialised = [False]

    def init(position: jax.Array, context: Any, temperature: Any) -> HMCState:
        # NumPyro's adaptation state is built in the default float dtype; a position of
        # another precision (float32 under x64) would mix dtypes inside its lax.cond.
        position = jnp.asarray(position, dtype=jnp.result_type(float))
        temperature = jnp.asarray(temperature, dtype=position.dtype)
        # NumPyro's init_kernel also configures its sample_kernel (adaptation schedule, tree
        # depth) through closure variables, so it must run before any step is traced.
        state = init_kernel(
            position,
            num_warmup,
            model_args=(context, temperature),
            rng_key=jax.random.key(0),  # only seeds NumPyro's unused step-size search
            **init_options,
        )
        initialised[0] = True
        return HMCState(
            position=state.z,
            energy=state.potential_energy * temperature,
            energy_grad=state.z_grad * temperature,
            temperature=temperature,
            iteration=state.i,
            adapt_state=state.adapt_state,
            trajectory_length=state.trajectory_length,
            mean_accept_prob=state.mean_accept_prob,
        )

    def step(rng_key: jax.Array, state: HMCState, context: Any) -> tuple[HMCState, HMCInfo]:
        if not initialised[0]:
            raise RuntimeError(f"{algo}: call init(...) before step(...) on this kernel.")
        temperature = state.temperature
        adapt_state, trajectory_length = state.adapt_state, state.trajectory_length
        step_size = adapt_state.step_size
        if jitter:
            # The factor is drawn from a key NumPyro never derives from this step's key (a
            # fold-in of JITTER_STREAM; NumPyro splits the key into a few), independently of
            # the state, so every transition is a mixture of HMC kernels that each leave the
            # target invariant. NumPyro gets the step's key itself: warm-up, where the factor
            # is exactly 1, goes bit for bit as without jitter.
            adapting = state.iteration < num_warmup
            factor = jnp.where(
                adapting, 1.0, 1.0 + jitter * _uniform_signed(rng_key, step_size.dtype)
            )
            if fixed_num_steps:
                step_size = step_size * factor
                adapt_state = adapt_state._replace(step_size=step_size)
            else:
                trajectory_length = trajectory_length * factor
        numpyro_state = _NumPyroState(
            i=state.iteration,
            z=state.position,
            z_grad=state.energy_grad / temperature,
            potential_energy=state.energy / temperature,
            energy=jnp.zeros_like(state.energy),
            r=None,
            trajectory_length=trajectory_length,
            num_steps=jnp.zeros_like(state.iteration),
            accept_prob=jnp.zeros_like(state.energy),
            mean_accept_prob=state.mean_accept_prob,
            diverging=jnp.array(False),
            adapt_state=adapt_state,
            rng_key=rng_key,
        )
        new = sample_kernel(numpyro_state, model_args=(context, temperature))
        energy = new.potential_energy * temperature
        new_adapt_state = new.adapt_state
        if jitter and fixed_num_steps:
            # After warm-up NumPyro hands back the adapt state it was given, whose step size
            # was jittered: keep the adapted one.
            new_adapt_state = new_adapt_state._replace(
                step_size=jnp.where(
                    adapting, new_adapt_state.step_size, state.adapt_state.step_size
                )
            )
        if algo == "HMC" and not fixed_num_steps:
            # NumPyro integrates the time exactly: num_steps = ⌈L/ε⌉ steps of L/num_steps.
            step_size = trajectory_length / new.num_steps
        new_state = HMCState(
            position=new.z,
            energy=energy,
            energy_grad=new.z_grad * temperature,
            temperature=temperature,
            iteration=new.i,
            adapt_state=new_adapt_state,
            trajectory_length=state.trajectory_length,
            mean_accept_prob=new.mean_accept_prob,
        )
        info = HMCInfo(
            acceptance_rate=new.accept_prob,
            is_divergent=new.diverging,
            energy=energy,
            hamiltonian=new.energy,
            step_size=step_size,
            num_integration_steps=new.num_steps,
        )
        return new_state, info

    return Kernel(
        init=init,
        step=step,
        configuration_fields=("position", "energy", "energy_grad"),
        num_warmup=num_warmup,
        validate=no_validation,
        name=algo,
    )


@functools.lru_cache(maxsize=128)
def nuts(
    energy_fn: EnergyFn,
    *,
    num_warmup: int,
    step_size: float = 1.0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    dense_mass: bool = False,
    asynchronous: bool = True,
) -> Kernel:
    """The No-U-Turn sampler on ``p(s) ∝ exp(−E(s, context)/T)``, by NumPyro's kernel.

    Warm-up adaptation (NumPyro's: dual-averaging step size towards ``target_accept_prob``,
    windowed diagonal mass matrix, or dense with ``dense_mass=True``) runs for the first
    ``num_warmup`` steps of each chain; afterwards the kernel is fixed. Calls with equal
    arguments return the same kernel object, so the driver's compiled code is reused.

    **Asynchronous chains (the default).** :func:`samplers.sample` runs this kernel's chains
    asynchronously (:mod:`samplers._nuts_async`): one loop of leapfrog steps for all chains
    at once, in which a chain whose trajectory has ended starts its next one instead of
    waiting for the chain with the longest trajectory, as a vmapped synchronous step must.
    Each chain's draws, infos and final state are those of the synchronous route for the
    same key, up to floating-point rounding. ``asynchronous=False`` makes the driver scan
    ``step`` instead. ``init``/``step`` are the same either way, and wrappers such as
    :func:`parallel_tempering` and :func:`anneal` always step synchronously.

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar``, ``position`` of shape ``(n,)``,
            differentiable in ``position``.
        num_warmup: Number of adaptation steps (static; it fixes NumPyro's window schedule).
        step_size: Initial step size.
        target_accept_prob: Target of step-size adaptation.
        max_tree_depth: Maximum NUTS tree depth (at most ``2**max_tree_depth`` leapfrog steps).
        adapt_step_size: Adapt the step size during warm-up.
        adapt_mass_matrix: Adapt the mass matrix during warm-up.
        dense_mass: Adapt a dense rather than diagonal mass matrix.
        asynchronous: Let :func:`samplers.sample` run the chains asynchronously (above);
            ``False``: the synchronous scan over ``step``.

    Returns:
        A :class:`Kernel` whose ``init(position, context, temperature)`` returns an
        :class:`HMCState` and whose ``step(rng_key, state, context)`` returns
        ``(HMCState, HMCInfo)``; with ``asynchronous``, its ``run_chains`` is set.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> energy_fn = lambda s, c: 0.5 * jnp.sum((s - c) ** 2)
        >>> kernel = nuts(energy_fn, num_warmup=10)
        >>> state = jax.jit(kernel.init)(jnp.zeros(2), jnp.ones(2), 0.5)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(1), state, jnp.ones(2))
        >>> state.position.shape, info.acceptance_rate.shape
        ((2,), ())
    """
    depths = max_tree_depth if isinstance(max_tree_depth, tuple) else (max_tree_depth,)
    if len(depths) != (2 if isinstance(max_tree_depth, tuple) else 1) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths
    ):
        raise ValueError(
            "max_tree_depth must be an integer >= 1 (or a pair (warm-up, sampling) of them), "
            f"got {max_tree_depth!r}."
        )
    if not isinstance(asynchronous, bool):
        raise ValueError(f"asynchronous must be True or False, got {asynchronous!r}.")
    options = dict(
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix,
        dense_mass=dense_mass,
    )
    kernel = _build(energy_fn, "NUTS", num_warmup, dict(step_size=step_size, **options))
    if not asynchronous:
        return kernel
    from samplers._nuts_async import async_nuts_runner  # imports this module

    return kernel._replace(
        run_chains=async_nuts_runner(energy_fn, kernel.init, kernel_warmup=num_warmup, **options)
    )


@functools.lru_cache(maxsize=128)
def hmc(
    energy_fn: EnergyFn,
    *,
    num_warmup: int,
    step_size: float = 1.0,
    num_steps: int | None = None,
    trajectory_length: float | None = 2 * math.pi,
    target_accept_prob: float = 0.8,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    dense_mass: bool = False,
    jitter: float = 0.5,
) -> Kernel:
    """Hamiltonian Monte Carlo on ``p(s) ∝ exp(−E(s, context)/T)``, by NumPyro's kernel.

    The integration time is ``trajectory_length`` (the number of leapfrog steps follows the
    adapted step size), or exactly ``num_steps`` leapfrog steps when that is given. Warm-up
    adaptation as in :func:`nuts`.

    **Jitter (on by default).** A fixed step size ε and a fixed number of steps make a fixed
    integration time τ. On a near-Gaussian target a direction whose half-period is close to
    a multiple of τ is flipped or brought back at every transition: its draws barely
    decorrelate while the acceptance rate looks excellent (the energy error of a harmonic
    direction vanishes when its trajectory closes a half-period, so step-size adaptation
    gives no warning). So after warm-up every transition draws
    ``u ~ Uniform(−1, 1)`` from its own key, independently of the state, and integrates
    with step size ``ε (1 + jitter·u)`` (fixed ``num_steps``) or for a time
    ``trajectory_length · (1 + jitter·u)`` (then NumPyro takes ``⌈time/ε⌉`` steps). Each
    transition is an HMC kernel that leaves the target invariant, so their mixture does
    too. Warm-up is untouched: there the factor is exactly 1, NumPyro's adaptation runs as
    without jitter (bit for bit, for the same keys), and the adapted ε in the state is never
    replaced by a jittered one. Measured with 8 leapfrog steps, jitter 0 against 0.5
    (``benchmarks/results/samplers.md``, "HMC step-size jitter"; 3 seeds each): on a 10-D
    diagonal Gaussian the smallest bulk ESS per draw over means and second moments went
    from 0.003 to 0.245 and the largest R-hat from 1.27 to 1.01 (NUTS: 0.34, 1.005); for
    the covariance estimator on a (3, 4, 2) quadratic network at T = 1 the gradient's
    smallest ESS per draw went from 0.010 to 0.30 and R-hat from 1.07 to 1.003, and its
    worst error from 5.6 to 2.1 MCSE; on the main job's (64, 128, 10) network at T = 0.02
    the gradient's median ESS per draw went from 0.48 to 0.62 and its median R-hat from
    1.029 to 1.010 (NUTS: 0.70, 1.005), at the same cost per estimate. The price: where a
    fixed length happened to suit the target the median ESS can be up to about 20 % lower,
    and the acceptance rate falls by 0–0.04. Of 0.1–0.8, ``jitter = 0.5`` had the best worst
    case for 5 and 16 steps and was close to 0.8 for 8. ``jitter=0`` turns it off: then
    the kernel is NumPyro's transition with the step's own key (written out, the same numbers
    up to rounding: :mod:`samplers._hmc_transition`). The jittered kernel gives
    NumPyro that same key and draws its factor from a fold-in of it (``JITTER_STREAM``);
    runs with jitter differ from those of versions before 2026-12-02, which split the key.

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar``, ``position`` of shape ``(n,)``.
        num_warmup: Number of adaptation steps (static).
        step_size: Initial step size.
        num_steps: Fixed number of leapfrog steps per proposal (overrides
            ``trajectory_length``).
        trajectory_length: Integration time per proposal when ``num_steps`` is ``None``.
        target_accept_prob: Target of step-size adaptation.
        adapt_step_size: Adapt the step size during warm-up.
        adapt_mass_matrix: Adapt the mass matrix during warm-up.
        dense_mass: Adapt a dense rather than diagonal mass matrix.
        jitter: Relative jitter ``a`` in ``[0, 1)`` of the step size (``num_steps``) or of the
            integration time (``trajectory_length``) after warm-up, see above; 0 turns it off.

    Returns:
        A :class:`Kernel` with :class:`HMCState` states and :class:`HMCInfo` infos
        (``HMCInfo.step_size`` is the step the integrator took: jittered after warm-up).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> kernel = hmc(lambda s, c: 0.5 * jnp.sum(s**2), num_warmup=0, num_steps=5)
        >>> state = jax.jit(kernel.init)(jnp.zeros(3), (), 1.0)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, ())
        >>> int(info.num_integration_steps)
        5
    """
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise ValueError(
            f"jitter must be a number in [0, 1) (0 turns it off), got {jitter!r}; a factor "
            "1 − jitter ≤ 0 would make step sizes vanish or change sign."
        )
    if num_steps is not None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1 or None, got {num_steps!r}.")
        trajectory_length = None
    elif trajectory_length is None or not trajectory_length > 0:
        raise ValueError(
            f"trajectory_length must be > 0 when num_steps is None, got {trajectory_length!r}."
        )
    return _build(
        energy_fn,
        "HMC",
        num_warmup,
        dict(
            step_size=step_size,
            num_steps=num_steps,
            trajectory_length=trajectory_length,
            target_accept_prob=target_accept_prob,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
        ),
        jitter=jitter,
    )
