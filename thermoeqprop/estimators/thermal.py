r"""Equilibrium propagation at finite temperature, as inference (docs/mathematics.md#thermal-ep).

The network's state follows :math:`p_β(s) ∝ \exp(-F_β(s)/T)`, :math:`F_β = E + βC`, and the
objective is the expected cost :math:`L_T = ⟨C⟩_0`. Two exact identities give its gradient:

- covariance, **no clamping**: :math:`dL_T/dθ = -\frac1T \mathrm{Cov}_0(C, ∂_θE)`, from samples
  of the free phase only (:class:`ThermalCovariance`);
- nudged: :math:`dL_T/dθ = ∂_β ⟨∂_θE⟩_β` at β = 0, estimated from sampled phases at ±β (or 0
  and β) (:class:`ThermalNudged`).

States are drawn by the ``samplers`` package (NUTS/HMC through NumPyro for continuous states,
block Gibbs or Metropolis for spins, optionally inside parallel tempering), many chains per
example, all examples of a batch in one compiled call. Every estimate carries a Monte Carlo
standard error per parameter from ArviZ's effective sample size of the per-draw series whose
mean is the estimate, and the sampler's diagnostics. :class:`ThermalExact` is the reference:
enumeration of all spin states, or the Gaussian closed form of the quadratic network.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators import _control_variates, _coupled
from thermoeqprop.estimators._allocation import (
    RowSet,
    example_means,
    first_rows,
    more_rows,
    row_spreads,
)
from thermoeqprop.estimators._collapsed import check_sampling, collapses, draw_collapsed
from thermoeqprop.estimators._conditional import conditional_statistics, uses_conditional
from thermoeqprop.estimators._drawing import ThermalSamples, draw_states, on_one_device
from thermoeqprop.estimators._fallback import fallback_sampling, with_fallback
from thermoeqprop.estimators._importance import draw_importance
from thermoeqprop.estimators._pareto import weights_of
from thermoeqprop.estimators._rao_blackwell import check_option, spin_statistics, summed_means
from thermoeqprop.estimators._sampling import (
    SAMPLING_METHODS,
    START_METHODS,
    Sampling,
    _sampler_diagnostics,
)
from thermoeqprop.estimators._statistics import (
    DIAGNOSTIC_SERIES_BUDGET,
    SERIES,
    Combined,
    DrawStatistics,
    GradientSeries,
    _combined,
    _ess_rhat,
    _mcse,
    _merge_rounds,
    draw_statistics,
    parameter_names,
    series_window,
)
from thermoeqprop.estimators._thermal_exact import MAX_ENUMERATED_SPINS, ThermalExact
from thermoeqprop.models._base import EnergyModel

__all__ = [
    "MAX_ENUMERATED_SPINS",
    "SAMPLING_METHODS",
    "START_METHODS",
    "Combined",
    "Sampling",
    "ThermalCovariance",
    "ThermalExact",
    "ThermalNudged",
    "GradientSeries",
    "DrawStatistics",
    "ThermalSamples",
    "draw_statistics",
    "draw_states",
    "parameter_names",
    "series_window",
]


def _check_model(model, temperature):
    if not isinstance(model, EnergyModel):
        raise ValueError(f"model must be an EnergyModel, got {type(model).__name__}")
    check_positive("temperature", temperature)
    if model.state_bounds is not None and not model.is_spin:
        raise ValueError(
            f"{type(model).__name__} confines its states to a box ({model.state_bounds}); "
            "thermal sampling needs states in R^n: use a smooth activation such as 'sigmoid'"
        )


class _SampledEstimator(Estimator):
    """Shared machinery: rounds of sampling, statistics, diagnostics."""

    model: EnergyModel
    temperature: float
    sampling: Sampling

    def phases(self) -> tuple[float, ...]:
        """The nudging strengths β of the phases this estimator samples, in order."""
        raise NotImplementedError

    #: The :class:`DrawStatistics` series :meth:`combine` reads.
    needed_series: tuple[str, ...] = SERIES

    #: Whether any phase is nudged; if not, the samplers get the energy without the cost term.
    nudges: bool = True

    def series_divisor(self) -> float:
        """What :meth:`combine` divides its phases' series, and so their MCSEs, by."""
        raise NotImplementedError

    def combine(self, stats: list[DrawStatistics]) -> Combined:
        """Turn the :class:`DrawStatistics` of each phase (in :meth:`phases` order) into the
        estimate: a :class:`Combined` (raveled gradient, MCSE, loss, the series, ESS, R-hat)."""
        raise NotImplementedError

    def statistics(self, params, states, x, targets, beta=0.0, innovations=None, budget=None,
                   weights=None, row_weights=None) -> DrawStatistics:  # fmt: skip
        """The :class:`DrawStatistics` this estimator needs, of states (batch, chain, draw,
        n) drawn at nudge ``beta``; long runs average consecutive draws into windows
        (:func:`series_window`, with series of at most ``budget`` elements, or
        :data:`SERIES_BUDGET`). With :attr:`rao_blackwell` on, every draw's values are
        replaced by their conditional expectations given one parity class of layers; with
        ``control_variates``, two folds of chains are corrected by control variates
        (``"heat_bath"``: from the sampler's ``innovations`` (batch, chain, draw, k) of these
        draws, ``trace.info.innovations``). ``weights``: the importance weights (batch,
        chain, draw) of ``Sampling(method="importance")`` draws, mean 1 per example;
        ``row_weights`` (batch,): each row's weight in the batch's means (rows that repeat
        examples, ``Sampling.neyman_share``), None for one row per example."""
        num_params = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
        window = series_window(states.shape[2], states.shape[1], num_params, budget)
        if self.control_variates is not None:
            return _control_variates.corrected(
                self, params, states, x, targets, beta, window, innovations
            )
        return self._series(params, states, x, targets, beta, window, weights, row_weights)

    def _series(self, params, states, x, targets, beta, window, weights=None,
                row_weights=None) -> DrawStatistics:  # fmt: skip
        spins = spin_statistics(self, params, states, x, targets, beta, window, collapses(self))
        if spins is not None:
            return spins
        if self._conditional(beta):
            wanted = tuple(s in self.needed_series for s in SERIES)
            out = conditional_statistics(self.model, params, states, x, targets, wanted, window,
                                         beta, self.temperature, collapses(self),
                                         weights, row_weights)  # fmt: skip
            return DrawStatistics(*out, draws_per_entry=window)
        if weights is not None or row_weights is not None:  # collapsed sampling's statistics
            raise ValueError("importance and row weights need conditional expectations "
                             "(collapsed draws)")  # fmt: skip
        return draw_statistics(self.model, params, states, x, targets, self.needed_series, window)

    #: Conditional expectations (Rao–Blackwell): None = wherever the model supports them.
    rao_blackwell: bool | None = None

    #: Stein control variates (docs/mathematics.md#control-variates): None = off.
    control_variates: str | None = None

    #: Phases sampled as coupled pairs with common random numbers (nudged estimator only).
    coupled: bool = False

    def _drawer(self):
        """The draw function: continuous collapsed sampling (:func:`draw_collapsed`, or
        :func:`draw_importance` for ``method="importance"``), or :func:`draw_states` (whose
        kernel samples one class of a spin network's layers from its marginal when
        ``collapse=True``)."""
        if not collapses(self) or self.model.is_spin:
            return draw_states
        return draw_importance if self.sampling.method == "importance" else draw_collapsed

    def _phase_rows(self, params, x, targets, phase: _Phase, key, draw, budget):
        """One round of ``phase``: its draws (with Neyman allocation's extra rows in
        ``phase.rows``, more of them in a round after the first when ``Sampling.tops_up``;
        heavy-tailed rows drawn again by HMC), and their statistics and trace. Updates
        ``phase``'s chain ends and rows."""
        beta = phase.beta
        extra = self.sampling.neyman_rows(x.shape[0])
        draw_rows, redraw = self._row_drawer(params, beta), self._redraw(params, beta)
        spread_of = functools.partial(row_spreads, self.model, self.sampling.smooths_weights)
        if phase.rows is not None and self.sampling.tops_up:
            phase.rows = more_rows(draw_rows, spread_of, phase.rows, extra, x, targets, key,
                                   redraw)  # fmt: skip
        else:
            drawn = draw(beta, self.temperature, key, phase.position)
            phase.position = drawn.final_positions
            if extra:  # Neyman allocation: extra rows for the examples that vary most
                phase.rows = first_rows(draw_rows, spread_of, extra, x, targets, key, drawn,
                                        redraw)  # fmt: skip
            else:
                drawn = redraw(drawn, x, targets, key)
        rows = phase.rows
        if rows is not None:
            drawn, x, targets = rows.drawn, x[rows.examples], targets[rows.examples]
        innovations = on_one_device(getattr(drawn.trace.info, "innovations", None))
        stats = self.statistics(params, drawn.states, x, targets, beta, innovations, budget,
                                _draw_weights(drawn, self.sampling.smooths_weights),
                                None if rows is None else rows.weights(x.dtype))  # fmt: skip
        if rows is not None:
            stats = stats._replace(output=example_means(stats.output, rows.copies, rows.examples))
        return stats, drawn.trace

    def _redraw(self, params, beta):
        """``redraw(drawn, x, targets, key)``: importance draws of rows with those whose
        weights' k̂ exceeds ``Sampling.pareto_fallback`` drawn again by collapsed HMC
        (:func:`with_fallback`); the draws as they are without a limit."""
        limit = self.sampling.pareto_fallback
        hmc = self._row_drawer(params, beta, fallback=True)
        return lambda drawn, x, targets, key: with_fallback(hmc, drawn, x, targets, limit,
                                                            jax.random.fold_in(key, 2))  # fmt: skip

    def _row_drawer(self, params, beta, fallback=False):
        """``draw(x, targets, key)``: draws of rows of examples at ``beta``; ``fallback``:
        collapsed HMC laid out as importance draws (:func:`fallback_sampling`)."""
        if fallback:
            drawer = functools.partial(draw_collapsed, self.model,
                                       fallback_sampling(self.sampling), params)  # fmt: skip
        else:
            drawer = functools.partial(self._drawer(), self.model, self.sampling, params)
        return lambda x, targets, key: drawer(x, targets, beta, self.temperature, key,
                                              nudged=self.nudges)  # fmt: skip

    def _conditional(self, beta) -> bool:
        """Whether the statistics of a phase at ``beta`` use conditional expectations."""
        return uses_conditional(self.model, self.rao_blackwell, beta)

    def _validated(self, params, x, targets):
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        return x, targets

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        return self._estimate(params, x, targets, rng_key)[0]

    def estimate_with_series(
        self, params, x, targets, rng_key
    ) -> tuple[GradientEstimate, GradientSeries]:
        """The estimate and the per-draw series whose means it is (for ArviZ diagnostics).

        The same draws and gradient as ``self(params, x, targets, rng_key)``; the series keeps
        every draw up to :data:`DIAGNOSTIC_SERIES_BUDGET` elements (a call averages windows of
        draws beyond :data:`SERIES_BUDGET`), so its R-hat compares every draw, as ArviZ's, and
        the MCSE is computed from them."""
        estimate, combined, merged, traces = self._estimate(
            params, x, targets, rng_key, DIAGNOSTIC_SERIES_BUDGET
        )
        cost = np.mean([np.asarray(phase.cost) for phase in merged], axis=0)
        series = GradientSeries(
            np.asarray(combined.series),
            cost,
            parameter_names(params),
            traces,
            merged[0].draws_per_entry,
            np.asarray(combined.ess),
            np.asarray(combined.rhat),
        )
        return estimate, series

    def _estimate(self, params, x, targets, rng_key, budget=None):
        x, targets = self._validated(params, x, targets)
        phases = self.phases()
        _, unravel = ravel_pytree(params)
        collected: list[list[DrawStatistics]] = [[] for _ in phases]
        carried = [_Phase(beta) for beta in phases]
        traces = []
        rounds = self.sampling.max_rounds if self.sampling.target_relative_stderr else 1
        # importance sampling with Neyman allocation: later rounds add rows, not batches
        tops_up = self.sampling.tops_up
        reached = False
        for round_index in range(rounds):
            round_key = jax.random.fold_in(rng_key, round_index)
            draw = functools.partial(self._drawer(), self.model, self.sampling, params, x,
                                     targets, nudged=self.nudges)  # fmt: skip
            if self.coupled:  # one joint chain of pairs, one key (docs: "Coupled phases")
                drawn = draw(phases, self.temperature, round_key, carried[0].position)
                carried[0].position = drawn.final_positions
                traces.append(drawn.trace)
                for i, beta in enumerate(phases):
                    collected[i].append(self.statistics(params, drawn.states[..., i, :], x,
                                                        targets, beta, budget=budget))  # fmt: skip
            else:
                for i, phase in enumerate(carried):
                    phase_key = jax.random.fold_in(round_key, i)
                    stats, trace = self._phase_rows(params, x, targets, phase, phase_key, draw,
                                                    budget)  # fmt: skip
                    traces.append(trace)
                    # rounds of extra rows replace the phase's statistics; others add theirs
                    collected[i] = [stats] if tops_up else [*collected[i], stats]
            merged = [_merge_rounds(phase) for phase in collected]
            combined = self.combine(merged)
            relative = jnp.linalg.norm(combined.stderr) / jnp.maximum(
                jnp.linalg.norm(combined.grad), 1e-300
            )
            target = self.sampling.target_relative_stderr
            if target is not None and float(relative) < target:
                reached = True
                break
        diagnostics = {
            "relative_stderr": relative,
            "rounds": jnp.asarray(round_index + 1),
            "num_chains": jnp.asarray(combined.series.shape[0]),
            "num_draws_per_chain": jnp.asarray(
                combined.series.shape[1] * merged[0].draws_per_entry
            ),
            "draws_per_entry": jnp.asarray(merged[0].draws_per_entry),
            **_ess_rhat(combined),
            **_control_variates.gain(self, merged, combined),
        }
        if self.sampling.target_relative_stderr is not None:
            diagnostics["precision_reached"] = jnp.asarray(reached)
        for key, value in _sampler_diagnostics(traces[-1], bool(self.sampling.tempering)).items():
            diagnostics[key] = value
        estimate = GradientEstimate(
            grad=unravel(combined.grad),
            loss=combined.loss,
            stderr=unravel(combined.stderr),
            loss_stderr=combined.loss_stderr,
            diagnostics=diagnostics,
        )
        return estimate, combined, merged, traces

    def predict(self, params, x, rng_key) -> jax.Array:
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        dummy = jnp.zeros((x.shape[0], self.model.num_outputs), x.dtype)
        drawn = self._drawer()(
            self.model,
            self.sampling,
            params,
            x,
            dummy,
            0.0,
            self.temperature,
            rng_key,
            nudged=self.nudges,
        )
        states = drawn.states
        if self.model.is_spin and collapses(self):  # the summed spins by their means
            states = summed_means(self.model, params, states, x, self.temperature)
        outputs = jax.vmap(jax.vmap(jax.vmap(self.model.output)))(states)
        if (weights := _draw_weights(drawn, self.sampling.smooths_weights)) is not None:
            outputs = weights[..., None] * outputs
        return jnp.mean(outputs, axis=(1, 2))


@dataclasses.dataclass
class _Phase:
    """What one phase of an estimate carries from round to round: its nudge, where its chains
    ended (the next round's starts) and its rows of draws (Neyman allocation, else None)."""

    beta: float
    position: Any = None
    rows: RowSet | None = None


def _draw_weights(drawn, smooth: bool):
    """The importance weights ``ω`` (mean 1 per example) of ``method="importance"`` draws,
    Pareto-smoothed if ``smooth`` (:func:`weights_of`); None for a Markov chain's."""
    log_weights = getattr(drawn.trace.info, "log_weights", None)
    return None if log_weights is None else weights_of(log_weights, smooth)


@dataclasses.dataclass(frozen=True)
class ThermalCovariance(_SampledEstimator):
    r"""The unclamped thermal gradient :math:`-\frac1T \mathrm{Cov}_0(C, ∂_θE)`.

    Only the free phase is sampled: the output is never clamped or nudged; its thermal
    fluctuations explore the cost. Noise is O(1/√ESS) nearly independently of T.

    Args:
        model: A continuous (smooth) or spin energy model.
        temperature: T > 0.
        sampling: Sampler settings.
        rao_blackwell: Conditional expectations given one parity class of layers in place of
            sampled values (docs/mathematics.md, "Conditional expectations", and for spins
            "Rao-Blackwellised spin estimators"); None: where possible.
        control_variates: None (off), ``"zv1"``, ``"zv2"`` or ``"laplace"``: Stein control
            variates, continuous states only (docs/mathematics.md#control-variates);
            ``"heat_bath"``: the innovations of collapsed spin sampling's heat-bath updates
            (``Sampling(collapse=True)``; docs/mathematics.md, "Heat-bath control variates").

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> est = ThermalCovariance(net, temperature=0.1)(
        ...     net.init_params(jax.random.key(0)), jnp.ones((2, 2)), jnp.ones((2, 1)),
        ...     jax.random.key(1))
        >>> est.stderr["weights"][0].shape
        (2, 3)
    """

    model: EnergyModel
    temperature: float = 0.05
    sampling: Sampling = Sampling()
    rao_blackwell: bool | None = None
    control_variates: str | None = None

    def __post_init__(self):
        _check_model(self.model, self.temperature)
        check_sampling(self)
        check_option(self.model, self.rao_blackwell)
        _control_variates.check(self.control_variates, self.model, self.sampling)

    needed_series = ("covariance",)
    nudges = False

    def phases(self):
        return (0.0,)

    def series_divisor(self):
        return self.temperature

    def combine(self, merged):
        (free,) = merged
        series = -free.covariance / jnp.asarray(self.series_divisor(), free.covariance.dtype)
        return _combined(series, None, free.cost, free.draws_per_entry)


@dataclasses.dataclass(frozen=True)
class ThermalNudged(_SampledEstimator):
    r"""The nudged thermal gradient :math:`[⟨∂_θE⟩_β − ⟨∂_θE⟩_{−β}]/(2β)` (or one-sided).

    The loss it reports is ``⟨C⟩_0`` from the free phase when one-sided, and the mean of the
    ±β phases' ``⟨C⟩`` (bias O(β²)) when symmetric. Its noise grows like √T/(β√ESS) with
    independent phases, and more slowly with ``coupled`` ones.

    Args:
        model: A continuous (smooth) or spin energy model.
        temperature: T > 0.
        beta: Nudging strength > 0.
        symmetric: Sample at ±β (bias O(β²)) instead of 0 and β (bias O(β)).
        sampling: Sampler settings.
        rao_blackwell: Conditional expectations given one parity class of layers in place of
            sampled values (docs/mathematics.md, "Conditional expectations", and for spins
            "Rao-Blackwellised spin estimators"); None: where possible.
        control_variates: As for :class:`ThermalCovariance`, from each phase's own law.
        coupled: Sample the two phases as pairs of chains driven by the same random numbers
            (docs/mathematics.md, "Coupled phases"): the per-draw difference stays small, its
            noise does not grow like 1/β, and the MCSE is that of the paired difference series.
            One temperature, no control variates.
    """

    model: EnergyModel
    temperature: float = 0.05
    beta: float = 0.1
    symmetric: bool = True
    sampling: Sampling = Sampling()
    rao_blackwell: bool | None = None
    control_variates: str | None = None
    coupled: bool = False

    def __post_init__(self):
        _check_model(self.model, self.temperature)
        check_positive("beta", self.beta)
        check_sampling(self)
        check_option(self.model, self.rao_blackwell)
        _control_variates.check(self.control_variates, self.model, self.sampling)
        _coupled.check(self)

    needed_series = ("energy_grad",)

    def phases(self):
        return (self.beta, -self.beta) if self.symmetric else (self.beta, 0.0)

    def series_divisor(self):
        return 2 * self.beta if self.symmetric else self.beta

    def combine(self, merged):
        high, low = merged
        scale = jnp.asarray(self.series_divisor(), high.cost.dtype)
        g_high, g_low = high.energy_grad, low.energy_grad
        cost = 0.5 * (high.cost + low.cost) if self.symmetric else low.cost
        if self.coupled:  # one joint chain: the MCSE of the paired difference series itself
            return _combined((g_high - g_low) / scale, None, cost, high.draws_per_entry)
        stderr = jnp.sqrt(_mcse(g_high) ** 2 + _mcse(g_low) ** 2) / scale
        # Independent phases: the per-draw difference is the series the diagnostics read.
        return _combined((g_high - g_low) / scale, stderr, cost, high.draws_per_entry)
