"""Section ``examples`` of ``benchmarks/variance_reduction.py``: where the main job's gradient
noise sits, digit by digit, and what two levers built on that would gain.

At the EP-trained parameters of section ``main``, the default estimator (collapsed sampling,
2 chains × (50 warm-up + 50 draws), T = 0.02) on ``--batches`` batches of 32 digits, each
estimated ``--reps`` times with fresh keys. The batch gradient is the mean over digits of each
digit's own term ``g_b`` (the mean over its draws of ``−(C − C̄)(u − ū)/T``, u the conditional
expectation of ``∂θE`` given the outputs), and the digits' draws are independent, so its
variance is ``Σ_b v_b / B²`` with ``v_b = Σ_p Var(g_bp)`` over the repetitions. Per batch:

- ``shares``: the largest ``v_b / Σ v``: how few digits hold the noise;
- ``allocation``: the variance ratio if the same total draws were shared out ``∝ σ_b``
  (Neyman), ``B Σ v_b / (Σ √v_b)²``, with the σ_b of the repetitions ("ideal") and with a
  pilot's: one call's own per-digit variance of the mean (the series' variance over its draws
  over their number, autocorrelation ignored), each repetition serving once as the pilot and
  judged by the variances of the others (median shown), with the Spearman correlation of the
  pilot's ranking with theirs;
- ``Stein A``: the per-draw correction ``b_p·H⁻¹[(C − c)∇F/T − ∇C]`` on the collapsed marginal
  F (Stein's identity for ``φ_p = (C − c)H⁻¹b_p``: mean exactly zero for the fixed
  ``c = C(y*)``), with y* the marginal's minimum (Newton), H its Hessian there and
  ``b_p = ∇_y∂θ_pF(y*)``: unlike the ``"laplace"`` control it keeps the cost exact. Computed
  here outside the package, to measure it; its cost is not timed.

``spread`` = RMS over repetitions of ``‖G − Ḡ‖/‖Ḡ‖`` (G the batch gradient, Ḡ the plain
route's mean over the repetitions; the same denominator for both routes). The digits' terms
are recomputed here from the estimator's own draws (same key); their mean is checked against
the estimator's gradient (``max |Δ|`` in the table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _vr_main import BATCH, MAIN_SAMPLING, TEMPERATURE, trained_by_ep
from jax.flatten_util import ravel_pytree
from scipy.stats import spearmanr

from thermoeqprop.data import load_dataset
from thermoeqprop.estimators import ThermalCovariance
from thermoeqprop.estimators._collapsed import _relaxed_kept, draw_collapsed, marginal_energy_fn
from thermoeqprop.estimators._control_variates import spd_inverse
from thermoeqprop.estimators._unit_tables import field_bound, unit_free_energy
from thermoeqprop.models import LayeredNetwork


def _functions(model, unravel):
    energy = marginal_energy_fn(model, nudged=False)
    zeros = jnp.zeros(model.num_outputs)

    def marginal(flat, y, x, table):
        p = unravel(flat)
        return energy(y, (p, x @ p["weights"][0], zeros, 0.0, table))

    def cost(y, target):
        return model.cost(model.rho(y), target)

    @jax.jit
    def expansion(flat, x, target, y0, table):
        def newton(y, _):
            g = jax.grad(marginal, 1)(flat, y, x, table)
            return y - jnp.linalg.solve(jax.hessian(marginal, 1)(flat, y, x, table), g), None

        y, _ = jax.lax.scan(newton, y0, None, length=30)
        hessian = jax.hessian(marginal, 1)(flat, y, x, table)
        b = jax.jacfwd(jax.grad(marginal, 0), argnums=1)(flat, y, x, table)  # (P, n)
        return y, spd_inverse(hessian), b, cost(y, target)

    @jax.jit
    def terms(flat, ys, x, target, table, inverse, b, c_fixed):
        """(plain, Stein A) per-draw series (C·D, P) of one digit, and the pilot variance."""
        u = jax.vmap(lambda y: jax.grad(marginal, 0)(flat, y, x, table))(ys)
        e = jax.vmap(lambda y: jax.grad(marginal, 1)(flat, y, x, table))(ys)
        c = jax.vmap(cost, (0, None))(ys, target)
        dc = jax.vmap(jax.grad(cost), (0, None))(ys, target)
        plain = -(c - c.mean())[:, None] * (u - u.mean(axis=0)) / TEMPERATURE
        r = (c - c_fixed)[:, None] * e / TEMPERATURE - dc
        stein = plain + (r @ inverse.T) @ b.T
        pilot = jnp.sum(jnp.var(plain, axis=0)) / plain.shape[0]
        return plain.mean(axis=0), stein.mean(axis=0), pilot

    return expansion, terms


def _spread(estimates, norm):
    """RMS of ``‖G − Ḡ‖`` over the rows of ``estimates``, over ``norm``."""
    centred = estimates - estimates.mean(axis=0)
    return np.sqrt(np.mean(np.sum(centred**2, axis=1))) / norm


def section_examples(args) -> list[str]:
    dataset = load_dataset("digits", seed=0)
    model = LayeredNetwork((64, 128, 10))
    params, accuracy = trained_by_ep(model, dataset)
    flat, unravel = ravel_pytree(params)
    estimator = ThermalCovariance(model, TEMPERATURE, MAIN_SAMPLING)
    expansion, terms = _functions(model, unravel)
    rng = np.random.default_rng(2)
    lines = [
        "### Section examples: the main job's gradient noise, digit by digit",
        "",
        f"EP-trained parameters (10 epochs, test accuracy {100 * accuracy:.2f} %), default "
        f"estimator (collapsed, {MAIN_SAMPLING.num_chains} × ({MAIN_SAMPLING.num_warmup} + "
        f"{MAIN_SAMPLING.num_samples}), T = {TEMPERATURE}), {args.reps} calls per batch.",
        "",
        "| batch | ‖Ḡ‖ | largest shares of the variance | allocation gain: ideal | "
        "pilot (median) | pilot's Spearman ρ (median) | spread: plain | spread: Stein A "
        "| max \\|Δ\\| vs estimator |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for batch_index in range(args.batches):
        idx = rng.choice(len(dataset.labels_train), BATCH, replace=False)
        x = jnp.asarray(dataset.x_train[idx])
        targets = model.encode_labels(dataset.labels_train[idx])
        table = unit_free_energy("sigmoid", TEMPERATURE, field_bound(params, x, "sigmoid"),
                                 x.dtype)  # fmt: skip
        starts = _relaxed_kept(model, params, x, targets, 0.0)
        expanded = [expansion(flat, x[b], targets[b], starts[b], table) for b in range(BATCH)]
        plain, stein, pilots, mismatch = [], [], [], 0.0
        for rep in range(args.reps):
            key = jax.random.key(10**4 * batch_index + rep)
            # The estimator's own draws: its round 0, phase 0 key.
            draw_key = jax.random.fold_in(jax.random.fold_in(key, 0), 0)
            drawn = draw_collapsed(model, MAIN_SAMPLING, params, x, targets, 0.0, TEMPERATURE,
                                   draw_key, nudged=False)  # fmt: skip
            ys = drawn.trace.samples
            draws = ys.reshape(BATCH, -1, ys.shape[-1])
            per_digit = [
                terms(flat, draws[b], x[b], targets[b], table, *expanded[b][1:])
                for b in range(BATCH)
            ]
            plain.append(np.stack([np.asarray(t[0]) for t in per_digit]))
            stein.append(np.stack([np.asarray(t[1]) for t in per_digit]))
            pilots.append(np.array([float(t[2]) for t in per_digit]))
            reference = ravel_pytree(estimator(params, x, targets, key).grad)[0]
            mismatch = max(mismatch, float(np.max(np.abs(plain[-1].mean(0) - reference))))
        plain, stein, pilots = np.stack(plain), np.stack(stein), np.stack(pilots)
        v = np.sum(np.var(plain, axis=0, ddof=1), axis=1)  # (B,)
        shares = np.sort(v / v.sum())[::-1][:3]
        ideal = BATCH * v.sum() / np.sqrt(v).sum() ** 2
        gains, rhos = [], []
        for k, pilot in enumerate(pilots):  # the variances judged by the other repetitions
            others = np.sum(np.var(np.delete(plain, k, axis=0), axis=0, ddof=1), axis=1)
            n = np.sqrt(pilot) / np.sqrt(pilot).mean()  # draws ∝ σ̂, the same total
            gains.append(others.sum() / np.sum(others / n))
            rhos.append(spearmanr(others, pilot)[0])
        batch_plain, batch_stein = plain.mean(axis=1), stein.mean(axis=1)
        centre = batch_plain.mean(axis=0)
        norm = np.linalg.norm(centre)

        lines.append(
            f"| {batch_index} | {norm:.4f} | {', '.join(f'{s:.2f}' for s in shares)} | "
            f"{ideal:.2f} | {np.median(gains):.2f} | {np.median(rhos):.2f} | "
            f"{_spread(batch_plain, norm):.3f} | {_spread(batch_stein, norm):.3f} | "
            f"{mismatch:.1e} |"
        )
        print(f"  examples: batch {batch_index + 1}/{args.batches} done", flush=True)
    return [*lines, ""]
