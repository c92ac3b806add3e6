r"""Control variates for the thermal estimators: Stein's for continuous states
(docs/mathematics.md#control-variates), and the heat-bath innovations of collapsed spin
sampling (docs/mathematics.md, "Heat-bath control variates").

For the Gibbs law :math:`π(s) ∝ \exp(-F_β(s)/T)` of a smooth energy on Rⁿ, the Langevin–Stein
operator :math:`𝒜φ = T\,∇·φ − ∇F_β·φ` has :math:`E_π[𝒜φ] = 0` for every polynomial vector
field φ (integrate :math:`∇·(Tφ\,e^{-F_β/T})` over Rⁿ). A per-draw series minus any multiple
of such functions keeps its expectation, and the right multiple removes most of its variance:

- ``"zv1"``: φ constant: the n controls :math:`-∂_iF_β(s)`;
- ``"zv2"``: also φ = ∇P for :math:`P = δ_iδ_j` (i ≤ j, δ = s − m): the controls
  :math:`2T[i = j] − (∂_iF_β δ_j + ∂_jF_β δ_i)`, n(n+3)/2 in all;
- ``"laplace"``: one control per parameter from the Laplace expansion about the minimum s* of
  F_β with Hessian H: for the covariance series, φ_p = H⁻¹S_p δ with
  :math:`S_p = \mathrm{sym}(a\,b_p^\top)`, :math:`a = ∇C(s^*)`, :math:`b_p = ∇_s∂_{θ_p}E(s^*)`,
  so that :math:`𝒜φ_p = b_p·v(s)`,
  :math:`v = T u − ½(u·e)δ − ½(a·δ)H^{-1}e` (u = H⁻¹a, e = ∇F_β(s), δ = s − s*), which is
  exactly :math:`E[q_p] − q_p` for the leading fluctuation :math:`q_p = (a·δ)(b_p·δ)` of the
  series when the law is Gaussian; for ``∂θE`` (the nudged series), φ_p = H⁻¹b_p and
  v = H⁻¹e. One n-vector per draw serves every parameter: the controls of all P parameters
  are one reverse pass, the pullback of :math:`θ ↦ ∇_sE(s^*; θ)` applied to v.
- ``"heat_bath"`` (layered spin networks with collapsed sampling): the k innovations
  :math:`d_j = s_j − E[s_j \mid \text{other kept spins}]` of each sweep's heat-bath updates,
  recorded by the sampler (``samplers.CollapsedGibbsInfo``); each has mean exactly 0 given the
  chain's past, and nothing is recomputed from the draws.

Coefficients are cross-fitted: the chains are split in two folds, each fold's series come
from the estimator's own statistics (plain or conditional expectations) on that fold alone,
centred by the fold's means, and the coefficients fitted on one fold are applied to the other.
They are then independent of the draws they multiply and the controls have mean exactly zero,
so the corrected series has exactly the expectation of the uncorrected fold-centred one.
``"zv1"``/``"zv2"``/``"heat_bath"`` regress the batch-mean series on every example's
controls at once (B·K regressors per parameter: the examples' laws differ, so each example's
controls get their own coefficients), by least squares on standardised controls;
``"laplace"`` fits one scalar per parameter. The estimator's MCSE, ESS and R-hat are then
those of the corrected series; :func:`gain` adds ``control_variate_gain`` to its diagnostics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from thermoeqprop.estimators._sampling import collapsed_spin_count
from thermoeqprop.estimators._statistics import SERIES, DrawStatistics, _mcse
from thermoeqprop.estimators.zero_temperature import Relaxation, relax

__all__ = [
    "CONTROL_VARIATES",
    "MIN_DRAWS_PER_COEFFICIENT",
    "chain_folds",
    "check",
    "corrected",
    "laplace_controls",
    "num_controls",
    "spd_inverse",
    "stein_controls",
]

CONTROL_VARIATES = ("zv1", "zv2", "laplace", "heat_bath")

# Least squares with K coefficients fitted on N series entries inflates the residual variance
# out of sample by about K/N_eff (N_eff the effective entries); 10 entries per coefficient keep
# that near 10 % for well-mixing chains. Fewer is refused, never silently fitted.
MIN_DRAWS_PER_COEFFICIENT = 10

# Where the Laplace control is expanded: any fixed point keeps it exactly mean-zero, so the
# sampler's own relaxation tolerance is enough (a residual r moves s* by r/λ, far below √T).
LAPLACE_RELAXATION = Relaxation(tolerance=1e-6)

# Ridge on the standardised normal equations, relative to their diagonal, in rounding units:
# numerical only, small enough that controls spanning a series exactly leave rounding.
RIDGE = 64


def num_controls(kind: str, state_size: int) -> int:
    """Controls per example: n for ``"zv1"`` and for ``"heat_bath"`` (n the sampled spins),
    n(n+3)/2 for ``"zv2"``; ``"laplace"`` fits one coefficient per parameter for the whole
    batch (counted as 1)."""
    n = state_size
    return {"zv1": n, "zv2": n * (n + 3) // 2, "laplace": 1, "heat_bath": n}[kind]


def chain_folds(num_chains: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two folds of chains ``(start, stop)``: the first ⌈C/2⌉ chains and the rest.

    Example:
        >>> chain_folds(2), chain_folds(5)
        (((0, 1), (1, 2)), ((0, 3), (3, 5)))
    """
    half = (num_chains + 1) // 2
    return (0, half), (half, num_chains)


def check(kind, model, sampling) -> None:
    """Raise a ``ValueError`` that names the problem unless ``kind`` can serve ``model`` with
    ``sampling``: None, or one of :data:`CONTROL_VARIATES` (``"heat_bath"`` on a spin network
    with ``collapse=True``, the others on continuous states in Rⁿ), with enough draws for one
    example (the batch size is checked when it is known)."""
    if kind is None:
        return
    if not isinstance(kind, str) or kind not in CONTROL_VARIATES:
        valid = ", ".join(repr(k) for k in CONTROL_VARIATES)
        raise ValueError(f"unknown control_variates {kind!r}; valid: None (off), {valid}")
    name = type(model).__name__
    if kind == "heat_bath":
        if not model.is_spin or sampling.collapse is not True:
            raise ValueError(
                "control_variates='heat_bath' takes its controls from the heat-bath updates of "
                "collapsed spin sampling, so it needs a layered spin network and "
                f"Sampling(collapse=True); got {name} with collapse={sampling.collapse!r}"
                + (
                    "" if model.is_spin else ": for continuous states use 'zv1', 'zv2' or 'laplace'"
                )  # fmt: skip
            )
        half = (sampling.num_chains // 2) * sampling.num_samples
        _check_draws(kind, collapsed_spin_count(model), 1, half, "draws")
        return
    if model.is_spin or model.state_bounds is not None:
        raise ValueError(
            f"control_variates={kind!r} needs continuous states in R^n (Stein's identity "
            f"integrates by parts over R^n); {name} has "
            f"{'spins' if model.is_spin else 'states confined to a box'}: use "
            "control_variates=None"
        )
    half = (sampling.num_chains // 2) * sampling.num_samples
    _check_draws(kind, model.state_size, 1, half, "draws")


def _check_draws(kind, state_size, batch, available, unit) -> None:
    """Refuse ``"zv1"``/``"zv2"``/``"heat_bath"`` with fewer than
    ``MIN_DRAWS_PER_COEFFICIENT`` series entries per fitted coefficient (B·K and the
    intercept) in the smaller fold."""
    if kind == "laplace":
        return
    per_example = num_controls(kind, state_size)
    k = batch * per_example
    needed = MIN_DRAWS_PER_COEFFICIENT * (k + 1)
    instead = {
        "zv1": "'laplace' (one coefficient per parameter)",
        "zv2": "zv1 or 'laplace' (one coefficient per parameter)",
        "heat_bath": "control_variates=None",
    }[kind]
    if available < needed:
        raise ValueError(
            f"control_variates={kind!r} fits {k} coefficients per parameter ({per_example} "
            f"controls × {batch} example{'s' * (batch > 1)}, n = {state_size} "
            f"{'sampled spins' if kind == 'heat_bath' else 'units'}) on each "
            f"half of the chains, which needs at least {needed} {unit} per half "
            f"({MIN_DRAWS_PER_COEFFICIENT} per coefficient and intercept); got {available}: "
            f"draw more (chains or samples), use smaller batches, or use {instead}"
        )


def spd_inverse(matrices) -> jax.Array:
    """Inverses of symmetric positive definite matrices (..., m, m) by Gauss–Jordan elimination
    without pivoting (stable for them), in plain XLA operations: ``2m³`` flops, a loop of ``m``
    rank-one updates. Not LAPACK: jaxlib's batched CPU kernels (getrf, potrf, trsm) split their
    batch over XLA's intra-op thread pool and wait on it, and two running at once on a pool of
    two threads wait on each other forever (seen here with jaxlib 0.10). A zero pivot (not
    positive definite) gives non-finite entries, which the callers check.

    Example:
        >>> import jax.numpy as jnp
        >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
        >>> bool(jnp.allclose(spd_inverse(a) @ a, jnp.eye(2)))
        True
    """
    m = matrices.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(m, dtype=matrices.dtype), matrices.shape)
    augmented = jnp.concatenate([matrices, eye], axis=-1)  # (..., m, 2m)

    def eliminate(k, rows):
        pivot = rows[..., k, :] / rows[..., k, k][..., None]
        rows = rows - rows[..., :, k][..., None] * pivot[..., None, :]
        return rows.at[..., k, :].set(pivot)

    inverse = jax.lax.fori_loop(0, m, eliminate, augmented)[..., m:]
    return 0.5 * (inverse + jnp.swapaxes(inverse, -1, -2))


def stein_controls(kind: str, grads, delta, temperature) -> jax.Array:
    r"""The zero-variance controls :math:`𝒜∇P` of one example's draws.

    Args:
        kind: ``"zv1"`` or ``"zv2"``.
        grads: (N, n) :math:`e = ∇_sF_β(s)` at the draws.
        delta: (N, n) :math:`δ = s − m` for a fixed centre m (it only changes the basis of
            the ``"zv2"`` span).
        temperature: T.

    Returns:
        (N, K) controls, each of mean zero under the Gibbs law: ``−e_i`` (P = s_i), then
        for ``"zv2"`` ``2T[i = j] − (e_i δ_j + e_j δ_i)`` (P = δ_iδ_j, i ≤ j, row-major).
    """
    first = -grads
    if kind == "zv1":
        return first
    i, j = np.triu_indices(grads.shape[-1])
    second = 2 * temperature * (i == j) - (grads[:, i] * delta[:, j] + grads[:, j] * delta[:, i])
    return jnp.concatenate([first, second], axis=1)


def corrected(
    estimator, params, states, x, targets, beta, window, innovations=None
) -> DrawStatistics:
    """The estimator's :class:`DrawStatistics` of states (batch, chain, draw, n) drawn at nudge
    ``beta``, each series corrected by its ``control_variates``.

    The series come from the estimator's own statistics (plain or conditional expectations)
    on each fold of chains (:func:`chain_folds`), so each fold is centred by its own means;
    the corrections are fitted on one fold and applied to the other (module docstring).
    Compiled once per model, kind, shapes and window; ``beta`` and ``temperature`` are traced.

    Args:
        estimator: A ``ThermalCovariance`` or ``ThermalNudged`` with ``control_variates`` set.
        params: Parameters.
        states: (batch, chain, draw, n) states of ``exp(−(E + βC)/T)``.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        beta: The nudge the states were drawn at.
        window: Draws per series entry (:func:`series_window`).
        innovations: ``"heat_bath"`` only: the sampler's innovations (batch, chain, draw, k)
            (``samplers.CollapsedGibbsInfo.innovations`` of the draws' trace).

    Returns:
        :class:`DrawStatistics` whose series are the corrected ones.
    """
    folds = chain_folds(states.shape[1])
    smaller = (folds[1][1] - folds[1][0]) * (states.shape[2] // window)
    kind, n = estimator.control_variates, states.shape[3]
    if kind == "heat_bath":
        if innovations is None or np.shape(innovations)[:3] != states.shape[:3]:
            raise ValueError(
                "control_variates='heat_bath' needs the sampler's innovations of these draws, "
                f"shape {states.shape[:3]} + (k,); got "
                f"{None if innovations is None else np.shape(innovations)}: pass "
                "innovations=trace.info.innovations of a collapsed spin run"
            )
        n = innovations.shape[3]
    _check_draws(kind, n, states.shape[0], smaller, "series entries")
    parts = [estimator._series(params, states[:, a:b], x, targets, beta, window) for a, b in folds]
    wanted = tuple(name for name in SERIES if name in estimator.needed_series)
    plain = {name: jnp.concatenate([getattr(p, name) for p in parts]) for name in wanted}
    dtype = states.dtype
    if kind == "heat_bath":
        out = _innovations_corrected(wanted, window, folds, innovations.astype(dtype), plain)
    else:
        out = _corrected(
            kind,
            estimator.model,
            wanted,
            window,
            folds,
            params,
            states,
            x,
            targets,
            jnp.asarray(beta, dtype),
            jnp.asarray(estimator.temperature, dtype),
            plain,
        )
    sizes = [b - a for a, b in folds]
    output = sum(n * p.output for n, p in zip(sizes, parts, strict=True)) / sum(sizes)
    return DrawStatistics(
        out.get("energy_grad"),
        out.get("covariance"),
        jnp.concatenate([p.cost for p in parts]),
        output,
        window,
        _squared_mcse(wanted, plain),
    )


@functools.partial(jax.jit, static_argnums=0)
def _squared_mcse(wanted, series):
    """Σ over the wanted series' components of their MCSE², the series without controls."""
    return sum(jnp.sum(jnp.nan_to_num(_mcse(series[name])) ** 2) for name in wanted)


def gain(estimator, merged, combined) -> dict[str, jax.Array]:
    """``{"control_variate_gain": ‖MCSE‖ without ÷ ‖MCSE‖ with the controls}``: the phases'
    ``control_mcse2`` divided as ``combine`` divides them (``estimator.series_divisor()``:
    T, or 2β or β), over the norm of ``combined.stderr``.
    Below 1 the controls add noise (chains that do not mix: docs/mathematics.md, "Heat-bath
    control variates"). Empty without controls or after several rounds."""
    parts = [phase.control_mcse2 for phase in merged]
    if any(part is None for part in parts):
        return {}
    plain = jnp.sqrt(sum(parts)) / estimator.series_divisor()
    return {"control_variate_gain": plain / jnp.linalg.norm(combined.stderr)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _corrected(
    kind, model, wanted, window, folds, params, states, x, targets, beta, temperature, plain
):
    if kind == "laplace":
        controls = _laplace_controls(
            model, wanted, window, params, states, x, targets, beta, temperature
        )
        corrected = {name: _cross_fit(plain[name], controls[name], folds) for name in wanted}
    else:
        corrected = _zv_corrected(
            kind,
            wanted,
            window,
            folds,
            model,
            params,
            states,
            x,
            targets,
            beta,
            temperature,
            plain,
        )
    return {name: _snapped(corrected[name], plain[name]) for name in wanted}


def _snapped(corrected, plain):
    """Components whose corrected series vary only by rounding (the controls span them
    exactly, as ``"zv2"`` does the quadratic ``∂θE`` of linear units) made constant at their
    mean: the estimate is unchanged, its MCSE is 0 and no ESS or R-hat is made of rounding."""
    # √eps: a least-squares fit leaves residuals of about cond·eps where the span is exact, and
    # no real cancellation reaches 1e-8 (float64) or 3e-4 (float32) of the series' scale.
    rounding = jnp.sqrt(jnp.finfo(plain.dtype).eps)
    scale = jnp.std(plain, axis=(0, 1)) + jnp.abs(jnp.mean(plain, axis=(0, 1)))
    exact = jnp.std(corrected, axis=(0, 1)) <= rounding * scale
    return jnp.where(exact, jnp.mean(corrected, axis=(0, 1)), corrected)


def _cross_fit(series, controls, folds):
    """``series − γ·controls`` (chain, entry, P) with γ per parameter fitted by least squares
    (with intercept) on one fold and applied to the other; γ = 0 where a control never
    varies."""
    pieces = []
    for (fit_a, fit_b), (use_a, use_b) in ((folds[1], folds[0]), (folds[0], folds[1])):
        y = series[fit_a:fit_b].reshape(-1, series.shape[-1])
        z = controls[fit_a:fit_b].reshape(-1, series.shape[-1])
        z = z - jnp.mean(z, axis=0)
        spread = jnp.sum(z * z, axis=0)
        varying = spread > 0
        gamma = jnp.where(varying, jnp.sum(z * y, axis=0) / jnp.where(varying, spread, 1), 0)
        pieces.append(series[use_a:use_b] - gamma * controls[use_a:use_b])
    return jnp.concatenate(pieces)


def laplace_controls(model, params, states, x, targets, beta, temperature, series, window=1):
    """The Laplace control series (chain, entry, P) of each requested series, before fitting:
    batch means of :math:`b_p·v(s)` (``"energy_grad"``) and :math:`−b_p·v(s)`
    (``"covariance"``, so that it tracks the series with coefficient 1 as T → 0), each of mean
    exactly zero under the Gibbs law. A dict by series name; compiled once per shapes."""
    wanted = tuple(name for name in SERIES if name in series)
    dtype = states.dtype
    return _laplace_controls_jit(
        model,
        wanted,
        window,
        params,
        states,
        x,
        targets,
        jnp.asarray(beta, dtype),
        jnp.asarray(temperature, dtype),
    )


def _laplace_controls(model, wanted, window, params, states, x, targets, beta, temperature):
    flat, unravel = ravel_pytree(params)
    b, c, d, n = states.shape
    start = model.initial_state(x)
    minimum = relax(model, params, x, targets, beta, start, LAPLACE_RELAXATION).state  # (B, n)
    grad_s = jax.grad(model.total_energy, argnums=1)

    def expansion(s_b, x_b, y_b):  # H = ∇²F_β(s*), a = ∇C(s*)
        hessian = jax.hessian(model.total_energy, argnums=1)(params, s_b, x_b, y_b, beta)
        return hessian, jax.grad(model.cost_fn)(s_b, y_b)

    hessians, a = jax.vmap(expansion)(minimum, x, targets)
    inverse = spd_inverse(hessians)  # (B, n, n)
    u = jnp.einsum("bij,bj->bi", inverse, a)
    draws = states.reshape(b, c * d, n)
    grads = jax.vmap(
        jax.vmap(grad_s, in_axes=(None, 0, None, None, None)), in_axes=(None, 0, 0, 0, None)
    )(params, draws, x, targets, beta)
    solved = jnp.einsum("bij,bdj->bdi", inverse, grads)  # H⁻¹e, (B, CD, n)
    # A Hessian that is not positive definite (no minimum there) gives no finite inverse; that
    # example's control is then 0, a choice made from s* and H alone, so the rest stay exactly
    # mean-zero.
    finite = jnp.all(jnp.isfinite(inverse), axis=(1, 2))
    vectors = {}
    if "energy_grad" in wanted:
        vectors["energy_grad"] = solved
    if "covariance" in wanted:
        delta = draws - minimum[:, None]
        ue = jnp.einsum("bn,bdn->bd", u, grads)[..., None]
        ad = jnp.einsum("bn,bdn->bd", a, delta)[..., None]
        v = temperature * u[:, None] - 0.5 * ue * delta - 0.5 * ad * solved
        vectors["covariance"] = -v
    # θ ↦ ∇_sE(s*; θ) once; its pullback of v is ∂θ(∇_sE(s*)·v) = (b_p·v)_p for all p.
    _, pullback = jax.vjp(
        lambda fp: jax.vmap(jax.grad(model.energy, argnums=1), in_axes=(None, 0, 0))(
            unravel(fp), minimum, x
        ),
        flat,
    )
    out = {}
    for name, v in vectors.items():
        v = jnp.where(finite[:, None, None], v, 0.0)
        means = v.reshape(b, c * (d // window), window, n).mean(axis=2)  # window means
        entries = jax.vmap(lambda w: pullback(w)[0])(jnp.swapaxes(means, 0, 1)) / b
        out[name] = entries.reshape(c, d // window, -1)
    return out


_laplace_controls_jit = jax.jit(_laplace_controls, static_argnums=(0, 1, 2))


def _zv_corrected(
    kind, wanted, window, folds, model, params, states, x, targets, beta, temperature, plain
):
    """Least-squares corrections on every example's controls at once, cross-fitted between
    the folds of chains: the batch-mean series of one fold regressed (with an intercept, on
    standardised controls) on the B·K controls of its entries, the coefficients applied to
    the other fold's controls, each example's zv2 controls centred on the fitting fold's mean
    state (a fixed point for the other fold)."""
    b, c, d, n = states.shape
    grad_s = jax.grad(model.total_energy, argnums=1)
    grads = jax.vmap(
        jax.vmap(
            jax.vmap(grad_s, in_axes=(None, 0, None, None, None)),
            in_axes=(None, 0, None, None, None),
        ),
        in_axes=(None, 0, 0, 0, None),
    )(params, states, x, targets, beta)  # (B, C, D, n)

    def control_entries(centre, a, z):  # (chains a..z, entries, B·K) with the given centres
        per_example = jax.vmap(
            lambda e, s, m: stein_controls(
                kind, e.reshape(-1, n), s.reshape(-1, n) - m, temperature
            )
        )(grads[:, a:z], states[:, a:z], centre)  # (B, (z − a)·D, K)
        per_example = per_example.reshape(b, z - a, d // window, window, -1).mean(axis=3)
        return jnp.moveaxis(per_example, 0, 3).reshape(z - a, d // window, -1)

    def entries(fit_fold, use_fold):  # each example's zv2 controls centred on the fit fold
        centre = jnp.mean(states[:, slice(*fit_fold)], axis=(1, 2))  # (B, n)
        return control_entries(centre, *fit_fold), control_entries(centre, *use_fold)

    return _regressed(wanted, folds, plain, entries)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _innovations_corrected(wanted, window, folds, innovations, plain):
    """``"heat_bath"``: the batch-mean series regressed on every example's innovations
    (B·k controls), cross-fitted between the folds of chains as for ``"zv1"``."""
    b, c, d, k = innovations.shape
    windowed = innovations.reshape(b, c, d // window, window, k).mean(axis=3)
    controls = jnp.moveaxis(windowed, 0, 2).reshape(c, d // window, b * k)

    def entries(fit_fold, use_fold):
        return controls[slice(*fit_fold)], controls[slice(*use_fold)]

    return _regressed(wanted, folds, plain, entries)


def _regressed(wanted, folds, plain, entries):
    """Each series of ``plain`` (chain, entry, P) minus its least-squares fit (intercept, on
    standardised controls) on controls of mean exactly zero, fitted on one fold of chains and
    applied to the other: ``entries(fit_fold, use_fold)`` gives the controls (chains, entry,
    M) of both folds."""
    out = {name: [] for name in wanted}
    for fit_fold, (use_a, use_z) in ((folds[1], folds[0]), (folds[0], folds[1])):
        fit, use = entries(fit_fold, (use_a, use_z))
        fit = fit.reshape(-1, fit.shape[-1])
        scale = jnp.std(fit, axis=0)
        scale = jnp.where(scale > 0, scale, 1.0)
        z = (fit - jnp.mean(fit, axis=0)) / scale
        ridge = RIDGE * jnp.finfo(z.dtype).eps * z.shape[0]
        inverse = spd_inverse(z.T @ z + ridge * jnp.eye(z.shape[1], dtype=z.dtype))
        for name in wanted:
            y = plain[name][slice(*fit_fold)].reshape(z.shape[0], -1)
            coef = inverse @ (z.T @ (y - jnp.mean(y, axis=0))) / scale[:, None]
            out[name].append(plain[name][use_a:use_z] - use @ coef)  # controls' mean is 0
    return {name: jnp.concatenate(pieces) for name, pieces in out.items()}
