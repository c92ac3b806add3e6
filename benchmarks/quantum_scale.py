"""Quantum EP at the scale of a published experiment: CPU seconds per batch (issue 13, item 4).

Network (``sensor_network``): 10 qubits, an 8-spin chain (qubits 0-7) and a sensor pair
(8, 9). Inputs ``x_q Z_q`` on the chain (8 features, fixed scale 1). 51 trainable Pauli
terms: ``X_q``, ``Z_q`` on all 10 qubits; ``ZZ``, ``XX``, ``YY`` on the 7 chain bonds; ``ZZ``,
``XX`` on the sensor pair and between chain qubits 6, 7 and each sensor. Outputs: the
projectors ``|00⟩⟨00|``, ``|01⟩⟨01|``, ``|10⟩⟨10|`` of the sensor pair; loss
``½ Σ_j (⟨Π_j⟩ − y_j)²`` with one-hot targets of a fixed 3-class rule (sign of the sums of
the first and last four features). Fresh examples every batch (x uniform in [−1, 1]^8),
batches of 10, ground-state EP with symmetric nudging β = 0.4 (``follow="index"``: the nudged
ground state), 10 shots per expectation (Gaussian model, one draw per Pauli string; also
reported: projective, 10 shots per basis setting), Adam (learning rate 0.02).

Routes, timed on the same parameters and batch, interleaved batch by batch:

* ``new``: ``EigenstateEP(solver="sparse", shots=10).call_with_state``, warm-started from the
  free states of the previous batch (lock-step Lanczos, one level when Weyl's bound allows);
* ``new, cold``: the same through ``__call__`` (no carried state);
* ``new, exact``: warm-started, no shots (for the gradient comparison);
* ``old``: the sparse route of commit faf027a, reproduced below (``old_route``): per example
  one host callback (``vmap_method="sequential"``), ARPACK (``eigsh``) for two levels from a
  fixed generic vector for the free state and from the free state for each nudged one,
  exact expectations (it had no shots).

The run first trains ``--train-first`` batches with ``new`` (untimed) so that the timings are
taken along a training run rather than at initialisation only, then ``--batches`` timed
batches; the parameters follow Adam on ``new``'s gradient throughout. CPU time is
``time.process_time()`` around each call (with ``block_until_ready``). The process is pinned to
one core and XLA, OpenBLAS and OpenMP to one thread (set before JAX and NumPy load; the
estimators also limit BLAS with threadpoolctl). The first call of each route (compilation) is
reported separately from the steady state (median and quartiles of the rest). Usage::

    PYTHONPATH=. python benchmarks/quantum_scale.py [--batches 30] [--train-first 200]
        [--markdown benchmarks/results/quantum_scale.md]
"""

from __future__ import annotations

import os
import sys

_CORE = sorted(os.sched_getaffinity(0))[:1]
os.sched_setaffinity(0, _CORE)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import thermoeqprop  # noqa: E402, F401  (x64)
from thermoeqprop.quantum import (  # noqa: E402
    EigenstateEP,
    QuantumNetwork,
    _lanczos,  # noqa: E402
)
from thermoeqprop.quantum import sensor_network as library_sensor_network  # noqa: E402
from thermoeqprop.quantum._following import follow_host  # noqa: E402
from thermoeqprop.quantum._observables import output_moments  # noqa: E402
from thermoeqprop.quantum._sparse import (  # noqa: E402
    lowest_levels,
    sparse_from_table,
    state_expectations_np,
)

BETA, SHOTS, BATCH, LEARNING_RATE = 0.4, 10, 10, 0.02


def sensor_network() -> QuantumNetwork:
    """The 10-qubit, 51-term network of the module docstring: the library's builder,
    ``thermoeqprop.quantum.sensor_network(8)``."""
    return library_sensor_network(8)


def fresh_batch(key):
    x = jax.random.uniform(key, (BATCH, 8), minval=-1.0, maxval=1.0)
    label = (jnp.sum(x[:, :4], 1) > 0).astype(int) + (jnp.sum(x[:, 4:], 1) > 0).astype(int)
    return x, jax.nn.one_hot(label, 3, dtype=jnp.float64)


# ------------------------------------------------------------------------------------------
# the old route (commit faf027a's sparse path), for the comparison
# ------------------------------------------------------------------------------------------
def _old_free(model, c):
    h = sparse_from_table(model.table, np.asarray(c))
    energies, vectors = lowest_levels(h, 2, tol=0.0)
    psi = vectors[:, 0]
    e_q = state_expectations_np(model.output_table, psi)
    return psi, np.float64(energies[1] - energies[0]), e_q.astype(np.float64)


def _old_nudged(model, c, nudge, psi):
    c, nudge, psi = np.asarray(c), np.asarray(nudge), np.asarray(psi)
    g = np.zeros(len(model.hamiltonian.trainable_strings))
    for sign in (1.0, -1.0):
        h = sparse_from_table(model.table, c + sign * BETA * nudge)
        energies, vectors = lowest_levels(h, 2, start=psi, tol=0.0)
        j, _, _, _ = follow_host(energies, vectors, psi, 0, True)
        g += sign / (2 * BETA) * state_expectations_np(model.trainable_table, vectors[:, j])
        output_moments(model, vectors[:, j], xp=np)  # the old route computed them too
    return g


def old_route(model):
    d = 1 << model.num_qubits

    def example(params, x, y):
        c = model.coefficients(params, x)
        jac = model.string_jacobian(params, x)
        psi, _, e_q = jax.pure_callback(
            functools.partial(_old_free, model),
            (
                jax.ShapeDtypeStruct((d,), jnp.float64),
                jax.ShapeDtypeStruct((), jnp.float64),
                jax.ShapeDtypeStruct((len(model.output_strings),), jnp.float64),
            ),
            c,
            vmap_method="sequential",
        )
        loss, _, gamma = model.cost_string_coefficients(e_q, y)
        g = jax.pure_callback(
            functools.partial(_old_nudged, model),
            jax.ShapeDtypeStruct((len(model.hamiltonian.trainable_strings),), jnp.float64),
            c,
            model.embed_cost(gamma),
            psi,
            vmap_method="sequential",
        )
        return jac.T @ g, loss

    @jax.jit
    def run(params, x, y):
        grads, losses = jax.vmap(example, in_axes=(None, 0, 0))(params, x, y)
        return jnp.mean(grads, axis=0), jnp.mean(losses)

    return run


# ------------------------------------------------------------------------------------------
def timed(fn):
    start = time.process_time()
    out = jax.block_until_ready(fn())
    return time.process_time() - start, out


def quartiles(values):
    return np.percentile(np.asarray(values), [25, 50, 75])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches")
    parser.add_argument("--train-first", type=int, default=200, help="untimed batches first")
    parser.add_argument("--markdown", default=None, help="write the results to this file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    model = sensor_network()
    common = dict(beta=BETA, solver="sparse", follow="index", max_nudge_ratio=np.inf)
    new = EigenstateEP(model, shots=SHOTS, shot_model="gaussian", **common)
    projective = EigenstateEP(model, shots=SHOTS, **common)
    exact = EigenstateEP(model, **common)
    old = old_route(model)
    params = model.init_params(jax.random.key(0))
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    keys = jax.random.split(jax.random.key(1), args.train_first + args.batches)
    states = {"new": None, "exact": None, "projective": None}
    times = {k: [] for k in ("new", "old", "cold", "exact", "projective")}
    rel_diff, gaps = [], []

    def run_all(x, y, key):
        """Every route on one batch, interleaved; CPU seconds, the estimate to train on, the
        exact gradients of the new and old routes."""
        t = {}
        t["new"], (estimate, states["new"]) = timed(
            lambda: new.call_with_state(params, x, y, key, states["new"])
        )
        t["old"], (g_old, _) = timed(lambda: old(params, x, y))
        t["cold"], _ = timed(lambda: new(params, x, y, key))
        t["exact"], (ex, states["exact"]) = timed(
            lambda: exact.call_with_state(params, x, y, key, states["exact"])
        )
        t["projective"], (_, states["projective"]) = timed(
            lambda: projective.call_with_state(params, x, y, key, states["projective"])
        )
        return t, estimate, ex.grad, g_old

    def train(estimate):
        nonlocal params, opt_state
        updates, opt_state = optimizer.update(estimate.grad, opt_state, params)
        params = optax.apply_updates(params, updates)

    # first calls: compilation (and a cold solve), reported apart
    x, y = fresh_batch(jax.random.key(2))
    first, estimate, _, _ = run_all(x, y, jax.random.key(3))
    for i in range(args.train_first):
        x, y = fresh_batch(keys[i])
        estimate, states["new"] = new.call_with_state(params, x, y, keys[i], states["new"])
        train(estimate)
    before = dict(_lanczos.STATS)
    for i in range(args.train_first, args.train_first + args.batches):
        x, y = fresh_batch(keys[i])
        t, estimate, g_exact, g_old = run_all(x, y, jax.random.fold_in(keys[i], 1))
        for name in times:
            times[name].append(t[name])
        diff = np.max(np.abs(np.asarray(g_exact) - np.asarray(g_old)))
        rel_diff.append(float(diff / np.max(np.abs(np.asarray(g_old)))))
        gaps.append(float(estimate.diagnostics["min_free_gap"]))
        train(estimate)
    stats = {k: _lanczos.STATS[k] - before[k] for k in before}
    load_after = os.getloadavg()
    report(args, first, times, rel_diff, gaps, stats, load_before, load_after)


def report(args, first, times, rel_diff, gaps, stats, load_before, load_after):
    names = {
        "new": "new: warm-started, 10 shots (Gaussian)",
        "projective": "new: warm-started, 10 shots (projective)",
        "cold": "new: cold start, 10 shots (Gaussian)",
        "exact": "new: warm-started, exact",
        "old": "old route (faf027a): ARPACK, per example, exact",
    }
    rows = []
    for key in ("new", "projective", "cold", "exact", "old"):
        q1, med, q3 = quartiles(times[key])
        rows.append(
            f"| {names[key]} | {first[key]:.2f} | {med:.3f} | {q1:.3f}–{q3:.3f} | "
            f"{med / np.median(times['old']):.2f} |"
        )
    runs = max(stats["runs"], 1)
    nudged = stats["nudged_one_level"] + stats["nudged_two_levels"]
    lines = [
        f"Command: `flock /tmp/thermoeqprop-bench.lock env PYTHONPATH=. python "
        f"benchmarks/quantum_scale.py --batches {args.batches} --train-first "
        f"{args.train_first}{' --markdown ' + args.markdown if args.markdown else ''}`",
        "",
        f"Date {datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.platform()}; "
        f"{os.cpu_count()} CPU cores (this process pinned to core {_CORE[0]}); "
        f"JAX {jax.__version__}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}.",
        "",
        f"CPU seconds (`time.process_time`) per batch of {BATCH}. First call: each route's "
        f"first batch (compilation and a cold solve). Steady state: median and quartiles over "
        f"{args.batches} batches timed after {args.train_first} untimed training batches, the "
        f"routes interleaved batch by batch.",
        "",
        "| route | first call (s) | steady state, median (s) | quartiles (s) | ratio to old |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Gradients, `new: warm-started, exact` against the old route: largest "
        f"max|Δg|/max|g| over the timed batches {max(rel_diff):.1e} (median "
        f"{np.median(rel_diff):.1e}). Smallest free gap seen {min(gaps):.3f} (median "
        f"{np.median(gaps):.3f}). Lanczos over the timed batches (all new routes): "
        f"{stats['steps'] / runs:.1f} steps per run over {stats['runs']} runs, "
        f"{stats['fallbacks']} ARPACK fallbacks; nudged problems settled with one level: "
        f"{stats['nudged_one_level']} of {nudged}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
