"""The health of sampled gradients, in words: checks with limits that fit the run's size.

A sampled gradient is the mean of a per-draw series of ``C`` chains × ``n`` draws (the
estimators' :class:`~thermoeqprop.estimators.GradientSeries`). Fixed textbook limits do not
fit a training run's short chains: "bulk ESS ≥ 100 per chain" cannot hold with 50 draws per
chain, and the largest split R-hat over thousands of components exceeds 1.01 even for
independent draws. So each limit here is stated for the run at hand:

- **Effective draws per draw** (bulk ESS ÷ ``C·n``): at least :data:`WORST_ESS_PER_DRAW_MIN`
  for the worst component of the worst batch and :data:`ESS_PER_DRAW_MEDIAN` for the median
  one. Independent draws give about 1, but the worst of many components' estimates lies far
  below: for independent normal series of 2 chains × 50 entries (the default train's, windows
  of 4 draws), 1 in 10⁵ components fell below 0.101 per draw and the worst of 4 × 10⁶ was
  0.081; of 2 × 100 entries, the worst of 10⁶ 0.078; of 2 × 400, 0.27 (simulations of
  2026-12-07, ``samplers.mean_diagnostics_many``, the estimate ``train`` records). So 0.1
  flagged independent draws in the worst of the default's 44 × 9,610 components, and the
  limit is 0.05, under the chance floor of these sizes (at least 2 chains; a single chain of
  50 entries reaches 0.044).
- **Split R-hat** of the worst of ``K`` values (``P`` components of each of the batches the
  record's worst case is taken over): the value that independent draws exceed with
  probability at most :data:`FAMILY_ALPHA`. With ``m = 2C`` half-chains of ``h = ⌊n/2⌋``
  draws, ``R̂² = (h−1)/h + (1/h)·B/W`` (B: h times the variance of the half-chain means; W:
  the mean within-half-chain variance), and for independent normal draws ``B/W`` follows
  Fisher's ``F(m−1, m(h−1))``; so the limit is ``√((h−1)/h + q/h)`` with ``q`` its
  ``1 − α/K`` quantile (a Bonferroni bound over the K values). For 2 chains of 50 draws and
  9,610 components of one batch it is 1.17; for 4 chains of 1,000 draws and 10 components,
  1.002. The **median component's** R-hat of the worst of ``B`` batches: at most
  :func:`median_rhat_limit`, the larger of 1.01 (Vehtari et al. 2021, for long chains) and
  ``rhat_limit(C, n, B)``. The components of a gradient are functions of the same few
  sampled units, so their median can move as one R-hat does; the limit is the value that
  independent draws exceed with probability at most ``α`` even then (and with less where the
  components vary apart). For 2 chains of 50 entries and 44 batches it is 1.091: there 1.01
  lies within one standard deviation (about 0.017) of one R-hat of independent draws, and the
  default train's worst batch exceeded it in 4 of 15 epochs while its last batch's median
  rank-normalised R-hat stayed at 0.999–1.003.
- **Relative MCSE of the gradient** (‖MCSE‖ ÷ ‖gradient‖): at most :data:`RELATIVE_MCSE_MAX`
  in the mean over an epoch's batches and in its worst batch; above it the step follows mostly
  Monte Carlo noise. ``train``'s rounds of draws (``--target-relative-stderr``, 0.2 by default
  with importance sampling) aim at the worst batch's; the verdict says when they ran out.
- **Divergent transitions** (HMC, NUTS): none.
- **Pareto k̂ of the importance weights** (``--sampler importance``): at most
  :data:`PARETO_K_MAX` for the worst example; above it that example's self-normalised
  estimate and its MCSE are not to be trusted (Vehtari et al. 2024; docs/mathematics.md,
  "Importance sampling"); the verdict says for what share of the examples drawn, or, with
  ``--pareto-fallback``, what share of them HMC drew again in their place.

Two R-hats appear in this package, and the tables say which: ``train`` records the split R-hat
(Gelman et al., not rank-normalised: cheap enough for every batch) of every batch's gradient
series; ``diagnose`` reads ArviZ's rank-normalised split R-hat (Vehtari et al. 2021) of the
saved series of each epoch's last batch.

Apart from these limits on noise, some epochs are not noisy but broken, and training stops
on them (:func:`epoch_faults`, :class:`RunStopped`) before the epoch is saved, so the results
folder keeps the last good epoch: a non-finite loss, gradient or parameters; a sampler that
rejected every move in every batch (acceptance or flip rate 0: the chains never left their
starts, so the "draws" are not draws); a T = 0 relaxation in which no example of some batch
reached the tolerance (an epoch where only some did is reported, not stopped); couplings that
grew in one epoch by more than ``1/√ε`` of the dtype, or until the temperature fell below the
rounding of ``E/T`` (:func:`thermoeqprop._validation.temperature_range`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "ESS_PER_DRAW_MEDIAN",
    "ESS_PER_DRAW_MIN",
    "FAMILY_ALPHA",
    "PARETO_K_MAX",
    "RELATIVE_MCSE_MAX",
    "RHAT_MEDIAN_MAX",
    "WORST_ESS_PER_DRAW_MIN",
    "Check",
    "RunStopped",
    "check_parameters_after",
    "epoch_faults",
    "epoch_line",
    "format_checks",
    "gradient_checks",
    "health_limits",
    "median_rhat_limit",
    "rhat_limit",
]

ESS_PER_DRAW_MIN = 0.1
WORST_ESS_PER_DRAW_MIN = 0.05
ESS_PER_DRAW_MEDIAN = 0.5
FAMILY_ALPHA = 0.05
RELATIVE_MCSE_MAX = 0.2
RHAT_MEDIAN_MAX = 1.01
PARETO_K_MAX = 0.7

LEVERS = {
    "mcse": "more draws (--num-samples) or chains (--num-chains): the MCSE falls as 1/√(draws)",
    "rounds": "noisy batches: --target-relative-stderr 0.2 (train's default with importance "
    "sampling) draws rounds of extra rows for a batch until its MCSE is under 0.2; where the "
    "rounds run out, a larger --neyman-share or more draws (--num-samples)",
    "rhat": "chains disagree: longer warm-up (--num-warmup), more chains (--num-chains), or "
    "parallel tempering (--tempering --replicas R) if the target has several modes",
    "ess": "draws are strongly correlated: more leapfrog steps (--hmc-steps), step-size jitter "
    "(--hmc-jitter 0.5), NUTS (--sampler nuts), or more draws",
    # The same for spins (block Gibbs, Metropolis): no trajectory to lengthen.
    "ess_spins": "draws are strongly correlated: more draws (--num-samples) or chains "
    "(--num-chains), parallel tempering (--tempering --replicas R) where chains rarely cross "
    "between modes, or for a layered spin network (where not on yet) collapsed sampling "
    "(--collapse on) and, once its chains mix, its heat-bath control variates "
    "(--control-variates heat_bath)",
    "divergences": "HMC trajectories diverged: a longer warm-up (--num-warmup) adapts a "
    "smaller step size; a lower temperature sharpens the target",
    "importance": "heavy importance weights: more pilot draws (--num-warmup) adapt the "
    "proposal; --pareto-fallback 0.7 (train's default) draws the examples whose Pareto k-hat "
    "stays above 0.7 again by HMC, --sampler hmc every example",
    "controls": "the control variates add noise: leave out --control-variates, or first make "
    "the chains mix (the levers above); coefficients fitted on one fold of chains that have "
    "not mixed do not cancel the other fold's noise",
}


class RunStopped(FloatingPointError):
    """A run that went bad midway: stopped with the unit (epoch or step) and the reason,
    before that unit was saved (the ``thermoeqprop`` commands exit with status 3)."""


#: What to try, per kind of fault.
FAULT_LEVERS = {
    "non-finite": "a smaller --learning-rate (or --temperature nearer the network's energy "
    "scale) keeps the numbers finite",
    "frozen": "a higher --temperature, a longer --num-warmup (HMC adapts a smaller step), or "
    "--tempering",
    "relaxation": "a smaller --learning-rate, a larger --max-iterations or a looser --tolerance",
    "couplings": "a smaller --learning-rate",
}


def epoch_faults(record: dict) -> tuple[str | None, list[str]]:
    """What is broken in one epoch's metrics record (``train``'s keys): the reason to stop
    with what to try, or None; and notes on what is wrong but not fatal.

    Example:
        >>> epoch_faults({"train_loss": 0.3, "grad_norm": 1.0, "diag_acceptance_rate": 0.0})[0]
        ... # doctest: +ELLIPSIS
        'the sampler rejected every proposed move in every batch (acceptance rate 0): ...'
    """
    for key, what in (("train_loss", "loss"), ("grad_norm", "gradient")):
        if key in record and not math.isfinite(_finite(record[key])):
            return (f"the {what} became non-finite ({record[key]}); "
                    f"{FAULT_LEVERS['non-finite']}", [])  # fmt: skip
    for key, rate in (("diag_acceptance_rate", "acceptance rate"), ("diag_flip_rate", "flip rate")):
        if key in record and _finite(record[key]) == 0:
            return (
                f"the sampler rejected every proposed move in every batch ({rate} 0): the chains "
                f"never left their starts, so their states are not draws; {FAULT_LEVERS['frozen']}",
                [],
            )
    notes = []
    if record.get("diag_rhat_max") == math.inf:
        notes.append(
            "the chains are stuck: the split R-hat is infinite (some gradient component never "
            "changed within any chain while the chains disagree), so the MCSE understates the "
            f"error; {FAULT_LEVERS['frozen']}"
        )
    for key in sorted(record):
        if not (key.startswith("diag_") and key.endswith("_converged_fraction")):
            continue
        phase = key[len("diag_") : -len("_converged_fraction")].replace("_", " ")
        fraction = _finite(record[key])
        residual = _finite(record.get(f"diag_{key[5:-19]}_residual"))
        if fraction == 0:
            return (
                f"no example's {phase} relaxation reached the tolerance in some batch (largest "
                f"residual {residual:.3g}): the gradient is a difference of unrelaxed states; "
                f"{FAULT_LEVERS['relaxation']}",
                [],
            )
        if fraction < 1:
            notes.append(
                f"in the worst batch only {100 * fraction:.0f} % of the examples' {phase} "
                f"relaxations reached the tolerance (largest residual {residual:.3g}); "
                f"{FAULT_LEVERS['relaxation']}"
            )
    return None, notes


class Check(NamedTuple):
    """One line of the health table.

    Attributes:
        name: What is measured, in words.
        value: The measured value (NaN when not recorded).
        limit: The limit, as printed (``"≤ 1.12"``).
        ok: Whether the value is within the limit (None: not measured).
        verdict: ``"ok"`` or what is wrong, in words.
        lever: What to change when it is not ok (a key of :data:`LEVERS`), or "".
    """

    name: str
    value: float
    limit: str
    ok: bool | None
    verdict: str
    lever: str = ""


def rhat_limit(
    num_chains: int, draws_per_chain: int, num_components: int, alpha: float = FAMILY_ALPHA
) -> float:
    """The split R-hat that the worst of ``num_components`` values of independent draws
    exceeds with probability at most ``alpha`` (module docstring).

    Example:
        >>> round(rhat_limit(2, 50, 9610), 3), round(rhat_limit(4, 1000, 10), 4)
        (1.174, 1.0019)
    """
    from scipy.stats import f

    if num_chains < 1 or draws_per_chain < 4 or num_components < 1:
        raise ValueError(
            "rhat_limit needs at least 1 chain of 4 draws and 1 component, got "
            f"{num_chains} chains × {draws_per_chain} draws, {num_components} components"
        )
    halves, length = 2 * num_chains, draws_per_chain // 2
    q = f.ppf(1 - alpha / num_components, halves - 1, halves * (length - 1))
    return math.sqrt((length - 1) / length + q / length)


def median_rhat_limit(num_chains: int, draws_per_chain: int, num_batches: int) -> float:
    """The limit of the median component's split R-hat of the worst of ``num_batches``
    batches (module docstring): ``max(RHAT_MEDIAN_MAX, rhat_limit(C, n, batches))``.

    Example:
        >>> round(median_rhat_limit(2, 50, 44), 3), median_rhat_limit(4, 1000, 1)
        (1.091, 1.01)
    """
    return max(RHAT_MEDIAN_MAX, rhat_limit(num_chains, draws_per_chain, num_batches))


def _entries(record: dict, draws_per_chain: int) -> int:
    """Series entries per chain behind the split R-hat of every batch: the draws, or their
    windows where an estimate averaged ``diag_draws_per_entry`` draws into one (the most of
    any batch, the largest limit). An R-hat of fewer entries is noisier, and its limit must
    say so: for 2 chains × 450 independent draws of 9,610 components the largest
    rank-normalised R-hat is about 1.015, of the same draws in 150 windows of 3 about 1.05."""
    per_entry = _finite(record.get("diag_draws_per_entry", 1))
    return max(4, draws_per_chain // int(per_entry if per_entry >= 1 else 1))


def _finite(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def gradient_checks(record: dict) -> list[Check]:
    """The checks of one epoch's metrics record (``metrics.jsonl``), worst batch first.

    Args:
        record: A metrics record of a sampled estimator, as ``train`` writes it:
            ``relative_stderr``; the estimator's ``diag_*`` keys (``num_chains``,
            ``num_draws_per_chain``, ``ess_min``, ``ess_median``, ``rhat_max``,
            ``rhat_median``, ``divergences``, ``control_variate_gain``), each the worst case
            over the epoch's batches;
            ``parameters`` (gradient components) and ``batches`` (estimates per epoch).
            Missing keys give unmeasured checks.

    Example:
        >>> record = {"relative_stderr": 0.6, "diag_num_chains": 2,
        ...           "diag_num_draws_per_chain": 50, "diag_rhat_max": 1.05, "parameters": 10}
        >>> [check.verdict for check in gradient_checks(record)][:2]
        ['noisy: the step follows mostly Monte Carlo noise', 'ok']
    """
    num_chains = int(_finite(record.get("diag_num_chains", 1)))
    draws_per_chain = int(_finite(record.get("diag_num_draws_per_chain", 4)))
    entries = _entries(record, draws_per_chain)
    num_components = int(record.get("parameters", 1))
    num_batches = int(record.get("batches", 1))
    draws = num_chains * draws_per_chain
    # HMC and NUTS record their step size; block Gibbs and Metropolis (spins) do not;
    # importance sampling records the Pareto k-hat of its weights.
    ess_lever = "ess" if "diag_mean_step_size" in record else "ess_spins"
    if "diag_pareto_k_max" in record:
        ess_lever = "importance"
    checks = []
    mcse = _finite(record.get("relative_stderr"))
    checks.append(
        _check(
            "relative MCSE of the gradient (mean over batches)", mcse, RELATIVE_MCSE_MAX,
            upper=True, bad="noisy: the step follows mostly Monte Carlo noise", lever="mcse",
            digits=3,
        )
    )  # fmt: skip
    if "diag_relative_stderr" in record:  # the worst batch's
        bad = "noisy batch: its step follows mostly Monte Carlo noise"
        if record.get("diag_precision_reached", 1) == 0:
            bad += " (its rounds of draws ran out)"
        checks.append(
            _check("relative MCSE of the gradient, worst batch",
                   _finite(record["diag_relative_stderr"]), RELATIVE_MCSE_MAX, upper=True,
                   bad=bad, lever="rounds", digits=3)
        )  # fmt: skip
    worst = rhat_limit(num_chains, entries, num_components * num_batches)
    median = median_rhat_limit(num_chains, entries, num_batches)
    checks.append(
        _check(
            "split R-hat, worst component (worst batch)", _finite(record.get("diag_rhat_max")),
            worst, upper=True, bad="chains disagree on some components", lever="rhat",
            digits=3,
        )
    )  # fmt: skip
    if "rank_rhat_max_last_batch" in record:
        # Rank-normalised: the bulk and the tail value, so twice the comparisons per batch;
        # of every draw unless the record says its series had fewer entries.
        ranked = int(record.get("rank_rhat_entries_last_batch", draws_per_chain))
        checks.append(
            _check(
                "rank R-hat, worst component (last batch)",
                _finite(record["rank_rhat_max_last_batch"]),
                rhat_limit(num_chains, ranked, 2 * num_components), upper=True,
                bad="chains disagree in the epoch's last batch", lever="rhat", digits=3,
            )
        )  # fmt: skip
    checks.append(
        _check(
            "split R-hat, median component (worst batch)",
            _finite(record.get("diag_rhat_median")), median, upper=True,
            bad="chains disagree on most components", lever="rhat", digits=3,
        )
    )  # fmt: skip
    for key, name, limit in (
        ("diag_ess_min", "bulk ESS per draw, worst component", WORST_ESS_PER_DRAW_MIN),
        ("diag_ess_median", "bulk ESS per draw, median component", ESS_PER_DRAW_MEDIAN),
    ):
        value = _finite(record.get(key)) / draws
        checks.append(
            _check(f"{name} (worst batch)", value, limit, upper=False,
                   bad="few effective draws", lever=ess_lever, digits=3)
        )  # fmt: skip
    if "diag_control_variate_gain" in record:
        name = "MCSE without ÷ with control variates (worst batch)"
        gain = _finite(record["diag_control_variate_gain"])
        if gain == math.inf:  # the controls span every series exactly (a Gaussian law, "zv2")
            checks.append(Check(name, gain, "≥ 1.00", True, "ok: the controls leave no noise"))
        else:
            checks.append(_check(name, gain, 1.0, upper=False, lever="controls", digits=2,
                                 bad="the control variates add noise"))  # fmt: skip
    if "diag_pareto_k_max" in record:
        share = record.get("diag_pareto_k_share")
        bad = "heavy-tailed weights: that example's estimate and MCSE are unreliable"
        if share is not None:
            bad = (f"heavy-tailed weights for {100 * share:.2g} % of the examples drawn (mean "
                   "over batches): their estimates and MCSEs are unreliable")  # fmt: skip
        check = _check(
            "Pareto k-hat of the importance weights, worst example (worst batch)",
            _finite(record["diag_pareto_k_max"]), PARETO_K_MAX, upper=True, bad=bad,
            lever="importance", digits=2,
        )  # fmt: skip
        redrawn = record.get("diag_redrawn_share")
        if check.ok and redrawn:  # --pareto-fallback: the heavy rows' draws are HMC's
            check = check._replace(verdict=f"ok: {100 * redrawn:.2g} % of the examples drawn "
                                           "again by HMC (mean over batches)")  # fmt: skip
        checks.append(check)
    if "diag_divergences" in record:
        checks.append(
            _check(
                "divergent transitions (worst batch)", _finite(record["diag_divergences"]), 0,
                upper=True, bad="the integrator diverged", lever="divergences", digits=0,
            )
        )  # fmt: skip
    return checks


def _check(name, value, limit, *, upper, bad, lever, digits) -> Check:
    shown = f"{'≤' if upper else '≥'} {limit:.{digits}f}"
    if not math.isfinite(value):
        return Check(name, value, shown, None, "not recorded")
    ok = value <= limit if upper else value >= limit
    return Check(name, value, shown, ok, "ok" if ok else bad, "" if ok else lever)


def format_checks(checks: list[Check], heading: str) -> str:
    """A short table of the checks, then the levers for what is not ok."""
    rows = [("check", "value", "limit", "verdict")] + [
        (c.name, "n/a" if not math.isfinite(c.value) else f"{c.value:.4g}", c.limit, c.verdict)
        for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [heading]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
                     + "  " + row[3])  # fmt: skip
    levers = list(dict.fromkeys(c.lever for c in checks if c.lever))
    if levers:
        lines.append("to improve:")
        lines += [f"  - {LEVERS[lever]}" for lever in levers]
    elif all(c.ok is not None for c in checks):
        lines.append("all checks pass.")
    return "\n".join(lines)


def epoch_line(record: dict, epochs: int) -> str:
    """One line per finished epoch: loss, test accuracy, gradient MCSE and R-hat, time."""
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['train_loss']:.4g}",
        f"test accuracy {100 * record['test_accuracy']:.2f} %",
    ]
    if "relative_stderr" in record:
        parts.append(f"gradient rel. MCSE {record['relative_stderr']:.3f}")
        if "diag_relative_stderr" in record:
            parts[-1] += f" (worst batch {record['diag_relative_stderr']:.3f})"
    if "diag_rhat_max" in record:
        parts.append(f"split R-hat max {record['diag_rhat_max']:.3f}")
    if "rank_rhat_max_last_batch" in record:
        parts.append(f"rank R-hat max {record['rank_rhat_max_last_batch']:.3f} (last batch)")
    if "temperature" in record:
        parts.append(f"T {record['temperature']:.3g}")
    parts.append(f"{record['epoch_seconds']:.2f} s")
    return "  ".join(parts)


def health_limits(record: dict) -> dict[str, tuple[str, float | None]]:
    """Plot titles and limits of the per-epoch series ``diag_rhat_max``, ``diag_ess_min`` and
    ``relative_stderr`` of a run, from one of its metrics records (as in
    :func:`gradient_checks`); the limit is None where the record lacks the run's size."""
    sized = "diag_num_chains" in record and "diag_num_draws_per_chain" in record
    chains = int(record.get("diag_num_chains", 1))
    draws = int(record.get("diag_num_draws_per_chain", 4))
    values = int(record.get("parameters", 1)) * int(record.get("batches", 1))
    return {
        "diag_rhat_max": (
            "split R-hat, worst component",
            rhat_limit(chains, _entries(record, draws), values) if sized else None,
        ),
        "diag_ess_min": (
            "bulk ESS, worst component",
            WORST_ESS_PER_DRAW_MIN * chains * draws if sized else None,
        ),
        "relative_stderr": ("relative MCSE of the gradient", RELATIVE_MCSE_MAX),
    }


def check_parameters_after(params, scale_before: float, estimator) -> float:
    """Raise :class:`RunStopped` when an epoch's updates broke the parameters: non-finite
    entries, couplings (the energy scale, :func:`thermoeqprop._validation.energy_scale`) grown
    by more than ``1/√ε`` of the dtype in the epoch, or grown until the estimator's
    temperature lies outside :func:`thermoeqprop._validation.temperature_range`. Returns the
    energy scale now."""
    from thermoeqprop._validation import _dtype, check_params, check_temperature_of

    try:
        check_params(params)
    except ValueError as error:
        raise RunStopped(f"the update made the parameters non-finite: {error}") from None
    dtype = _dtype(params)
    growth_limit = 1 / math.sqrt(float(np.finfo(dtype).eps))
    try:
        scale = check_temperature_of(estimator, params)
    except ValueError as error:
        raise RunStopped(f"the couplings grew until {error}; {FAULT_LEVERS['couplings']}") from None
    if scale > growth_limit * scale_before:
        raise RunStopped(
            f"the couplings blew up: the energy scale grew from {scale_before:.3g} to "
            f"{scale:.3g}, by more than 1/√ε = {growth_limit:.3g} of "
            f"{np.dtype(dtype).name}; {FAULT_LEVERS['couplings']}"
        )
    return scale
