"""Section ``coupled`` of ``benchmarks/variance_reduction.py``: coupled nudged phases.

``ThermalNudged(coupled=True)`` (docs/mathematics.md, "Coupled phases": the ±β phases as pairs
of chains with common random numbers, MCSE from the paired difference series) against the
plain covariance estimator (``ThermalCovariance(rao_blackwell=False)``), interleaved, a fresh
key per call:

- main job (``benchmarks/_vr_main.py``'s settings: 2 chains × (50 + 50) HMC transitions per
  example, T = 0.02, batches of 32 digits) at EP-trained parameters: the coupled estimator on
  collapsed sampling, with and without mode jumps, at each β of ``--coupled-betas``;
- the 9-spin layered network at T = 0.5 (``variance_reduction.spin_problem``; block Gibbs,
  4 chains × (200 + 4000) sweeps per example), conditional expectations on, at each β.

Per route: median s / call, median relative MCSE ``‖MCSE‖ / ‖ĝ‖`` (main; spins: over the
exact gradient's norm), the gain over plain at equal wall time by the scaling
``MCSE ∝ 1/√time`` (the coupled route samples two phases, so it is the slower one), and the
β bias against the MCSE: per call ``z = (ĝ_coupled − ĝ_plain) / √(MCSE_c² + MCSE_p²)`` on the
same batch (main; RMS over components and calls, 1 when the bias is far below the MCSE), and
``‖E ĝ_β − g‖ / ‖MCSE‖`` from the exact finite difference by enumeration (spins).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.estimators import ThermalCovariance, ThermalExact, ThermalNudged


def _flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _timed(estimator, params, x, y, key):
    start = time.perf_counter()
    estimate = jax.block_until_ready(estimator(params, x, y, key))
    return estimate, time.perf_counter() - start


def _interleaved(routes, cases, reps):
    """First call apart (compilation), then ``reps`` rounds of every case × route in turn."""
    first, out = {}, {name: [] for name in routes}
    for name, est in routes.items():
        first[name] = _timed(est, *cases[0], jax.random.key(10**6))[1]
    seed = 0
    for rep in range(reps):
        for case_index, case in enumerate(cases):
            for name, est in routes.items():
                estimate, seconds = _timed(est, *case, jax.random.key(seed))
                out[name].append((case_index, estimate, seconds))
                seed += 1
        print(f"  coupled: repetition {rep + 1}/{reps} done", flush=True)
    return first, out


def _bias_z(out, name, against="plain"):
    """RMS over components and calls of (ĝ_route − ĝ_plain)/√(MCSE² + MCSE²), same call slot."""
    zs = []
    for (_, a, _), (_, b, _) in zip(out[name], out[against], strict=True):
        se = np.sqrt(_flat(a.stderr) ** 2 + _flat(b.stderr) ** 2)
        zs.append((_flat(a.grad) - _flat(b.grad)) / np.where(se > 0, se, np.inf))
    return float(np.sqrt(np.mean(np.square(zs))))


def section_coupled(args, vr) -> list[str]:
    """The section; ``vr`` is the ``variance_reduction`` module (its spin problem)."""
    import _vr_main as vm

    lines = ["### Section coupled: coupled nudged phases against the plain covariance", ""]
    betas = args.coupled_betas
    # Main job, trained parameters.
    from thermoeqprop.data import load_dataset
    from thermoeqprop.models import LayeredNetwork

    dataset = load_dataset("digits", seed=0)
    model = LayeredNetwork((64, 128, 10))
    rng = np.random.default_rng(1)
    params, accuracy = vm.trained_by_ep(model, dataset)
    cases = []
    for _ in range(args.batches):
        idx = rng.choice(len(dataset.labels_train), vm.BATCH, replace=False)
        cases.append((params, jnp.asarray(dataset.x_train[idx]),
                      model.encode_labels(dataset.labels_train[idx])))  # fmt: skip
    routes = {"plain": ThermalCovariance(model, vm.TEMPERATURE, vm.MAIN_SAMPLING,
                                         rao_blackwell=False)}  # fmt: skip
    for beta in betas:
        for jumps in (False, True):
            name = f"coupled{' + jumps' if jumps else ''}, β = {beta:g}"
            sampling = vm._with_draws(vm.MAIN_SAMPLING.num_samples, collapse=None, jumps=jumps)
            routes[name] = ThermalNudged(model, vm.TEMPERATURE, beta, sampling=sampling,
                                         coupled=True)  # fmt: skip
    first, out = _interleaved(routes, cases, args.reps)
    lines += _main_table(routes, first, out, args, accuracy)
    # The 9-spin network.
    net, sparams, x, y = vr.spin_problem()
    exact = ThermalExact(net, vr.TEMPERATURE)
    g = _flat(exact(sparams, x, y).grad)
    routes = {
        "plain": ThermalCovariance(net, vr.TEMPERATURE, vr.BASE, rao_blackwell=False),
        "Rao-Blackwellised covariance": ThermalCovariance(net, vr.TEMPERATURE, vr.BASE),
    }
    finite = {}
    for beta in betas:
        for rb in (False, True):
            name = f"coupled{', RB' if rb else ''}, β = {beta:g}"
            routes[name] = ThermalNudged(net, vr.TEMPERATURE, beta, sampling=vr.BASE,
                                         rao_blackwell=rb, coupled=True)  # fmt: skip
            high = _flat(exact.nudged_energy_grad(sparams, x, y, beta))
            low = _flat(exact.nudged_energy_grad(sparams, x, y, -beta))
            finite[name] = (high - low) / (2 * beta)
    first, out = _interleaved(routes, [(sparams, x, y)], args.reps)
    lines += _spin_table(routes, first, out, g, finite)
    return lines


def _main_table(routes, first, out, args, accuracy):
    lines = [
        f"Main job, EP-trained parameters (test accuracy {100 * accuracy:.2f} %), "
        f"{args.batches} batches of 32 digits × {args.reps} interleaved repetitions; every "
        "route 2 chains × (50 warm-up + 50 draws) per example (coupled: per pair).",
        "",
        "| route | first call (s) | steady s / call (median) | relative MCSE (median, "
        "min–max) | largest R-hat (median) | gain over plain at equal time (1/√time) "
        "| bias z vs plain (RMS) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    med = {}
    for name, rows in out.items():
        seconds = np.array([r[2] for r in rows])
        rel = np.array([float(r[1].diagnostics["relative_stderr"]) for r in rows])
        rhat = np.array([float(r[1].diagnostics["rhat_max"]) for r in rows])
        med[name] = (np.median(seconds), np.median(rel))
        gain = med["plain"][1] / (med[name][1] * np.sqrt(med[name][0] / med["plain"][0]))
        bias = "–" if name == "plain" else f"{_bias_z(out, name):.2f}"
        lines.append(
            f"| {name} | {first[name]:.2f} | {med[name][0]:.4f} | {med[name][1]:.3f} "
            f"({rel.min():.3f}–{rel.max():.3f}) | {np.median(rhat):.3f} | {gain:.2f}× | {bias} |"
        )
    return [*lines, ""]


def _spin_table(routes, first, out, g, finite):
    norm = np.linalg.norm(g)
    lines = [
        "9-spin layered network, T = 0.5, 4 examples, block Gibbs 4 chains × (200 + 4000) "
        "sweeps per example (coupled: per pair); exact gradient by enumeration.",
        "",
        "| route | first call (s) | steady s / call (median) | ‖MCSE‖/‖g‖ (median) | "
        "RMS ‖ĝ − g‖/‖g‖ | gain over plain at equal time (1/√time) | ‖bias‖/‖MCSE‖ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    med = {}
    for name, rows in out.items():
        seconds = statistics.median(r[2] for r in rows)
        mcse = statistics.median(np.linalg.norm(_flat(r[1].stderr)) / norm for r in rows)
        error = np.sqrt(np.mean([np.sum((_flat(r[1].grad) - g) ** 2) / norm**2 for r in rows]))
        med[name] = (seconds, mcse)
        gain = med["plain"][1] / (mcse * np.sqrt(seconds / med["plain"][0]))
        bias = "0 (exact)" if name not in finite else (
            f"{np.linalg.norm(finite[name] - g) / (mcse * norm):.3f}")  # fmt: skip
        lines.append(
            f"| {name} | {first[name]:.2f} | {seconds:.4f} | {mcse:.4f} | {error:.4f} | "
            f"{gain:.2f}× | {bias} |"
        )
    return [*lines, ""]
