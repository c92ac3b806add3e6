"""Speed of the project's spin sampling and estimator path against minimal peers, side by side.

Every section times the project's route and its peers in ONE process, on the same inputs, with
the same number of chains and sweeps. Results are appended to
benchmarks/results/thermal_speed.md (newest run last) with the command line, the date, the
thread settings and the machine.

1. ``ThermalCovariance`` (block Gibbs, covariance gradient) on ``SpinNetwork.layered((64, 200,
   10))``, 32 examples × 8 chains × 200 draws, no warm-up, against a minimal dense-matmul block
   Gibbs written here in plain JAX (one ``jit``, a ``lax.scan`` over sweeps) that draws the same
   law for all 32 × 8 chains at once and accumulates the same covariance sums. The gradients
   are compared component by component in units of the estimator's MCSE, beside the same
   comparison of two estimates of the estimator itself, so that the minimal loop is known to
   do the same work. The estimator is timed with the plain sums (``rao_blackwell=False``, the
   minimal loop's work) and, beside them, with its default conditional expectations
   (docs/mathematics.md, "Rao-Blackwellised spin estimators"). :func:`dense_layers` reads the
   network's parameters in any of its layouts (edge list, dense couplings, weights/biases).
2. Block Gibbs alone on a 500-1000-500 layered spin network with every layer free (1M dense
   couplings, random fields), 8 chains, 100 sweeps: (a) ``samplers.block_gibbs`` with a dense
   matmul energy and two colour blocks (layers 1 and 3, then layer 2) through
   ``samplers.sample``; (b) the project's estimator path ``thermoeqprop.estimators.draw_states``
   on ``SpinNetwork.layered((1, 500, 1000, 500))`` with its one input at 0 (all three layers
   free; its blocks are its layers), and (b′, not in quick runs) on the general edge-list
   ``SpinNetwork`` with the same couplings and the two colours; (c) thrml's ``IsingEBM`` /
   ``IsingSamplingProgram`` with the two colour blocks; (d) a plain matmul ``lax.scan`` loop as
   the floor. Sweeps and spin updates per second, and each route's time over the floor's.
3. The default ``thermoeqprop train`` epoch (float64, as the command runs) against a T = 0 EP
   epoch of the same network, interleaved one-epoch runs, synchronised epoch times from
   metrics.jsonl, and the thermal epoch's achieved GFLOP/s beside a plain jitted matmul's;
   ``--draws`` adds thermal routes with other chains and draws (or importance sampling), in
   the same interleaving;
   ``--baseline REV`` adds the default train of an earlier git revision (its files from
   ``git archive``, run in a child process with the same threads and cores), so that "no more
   time per epoch than at REV" is measured side by side.
4. NUTS and HMC: ``samplers.sample(nuts)`` (asynchronous chains, the default) and
   ``nuts(..., asynchronous=False)`` (NumPyro's transition vmapped over chains and scanned)
   against NumPyro's ``MCMC(NUTS(potential_fn), chain_method="vectorized")`` on a 10-D
   correlated Gaussian in steady state (NumPyro's ``MCMC.run`` traced once inside ``jax.jit``,
   since called as is it compiles again every time; the plain call is timed too), min bulk ESS
   per second; ``samplers.hmc`` with 8 leapfrog steps and no jitter against NumPyro's
   ``HMC(num_steps=8)``, the same algorithm; and the batched route, one
   ``samplers.sample(..., batched=True)`` call for 32 Gaussian targets against 32 NumPyro runs.
   The ratios the thermal-speed issue sets targets for are printed under the tables.

How to read the tables: 'first' is the first call of a route (compilation + run); 'steady' is
the median of later calls with new keys; the repetitions are interleaved (A, B, A, B, …, each
call ending in ``jax.block_until_ready``), so a change of machine load hits every route
alike; 'compile' is the part of the first call that JAX's ``backend_compile`` events account
for. Ratios are of steady medians and are what a run rests on: absolute times move with the
load of this shared machine, recorded with every run. Everything is float32 (x64 off).

    python benchmarks/thermal_speed.py [--quick] [--sections 1 2 4] [--reps N]
        [--temperature 0.5] [--threads N] [--[no-]graph]
        [--draws 2x300 4x150+50,jumps 2x256+128,is]
        [--baseline REV]
        [--output benchmarks/results/thermal_speed.md]

Threads: ``--threads N`` (default: every core the process may use) sets XLA_FLAGS
(``--xla_cpu_multi_thread_eigen``, ``intra_op_parallelism_threads``), OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS before JAX is imported, and pins the process to N
cores (XLA sizes its CPU thread pool from the cores it may use); THERMOEQPROP_X64=0 keeps the
package from turning on x64 at import. All of it is printed and written with the results.

``--quick`` keeps the sizes of sections 1 and 2 and cuts the repetitions, leaves out (b′) and
NumPyro's plain call, and runs section 4 with 200 warm-up steps, 300 draws and 8 targets; its
results are marked as a quick run. ``--graph`` / ``--no-graph`` force (b′) on or off.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import _threads
from _report import append_run

# Threads: set before JAX (and NumPy's BLAS) are imported, and printed.
THREAD_ENV = _threads.apply(sys.argv[1:], x64=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import samplers  # noqa: E402
from thermoeqprop.estimators import Sampling, ThermalCovariance, draw_states  # noqa: E402
from thermoeqprop.models import SpinNetwork  # noqa: E402

DTYPE = jnp.float32
COMPILE_EVENTS: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_EVENTS.append(seconds) if "backend_compile" in name else None
)


# ------------------------------------------------------------------------------------------
# Timing: first call (compile + run), then interleaved steady repetitions, medians.


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()`` run to completion: its output, wall-clock seconds, seconds spent compiling."""
    COMPILE_EVENTS.clear()
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start, sum(COMPILE_EVENTS)


class Timing(NamedTuple):
    first: float  # first call: compilation + run
    first_compile: float  # of which XLA compilation
    steady: list[float]  # later calls, new key each
    steady_compile: float  # compile seconds seen during the steady calls (should be 0)

    @property
    def median(self) -> float:
        return statistics.median(self.steady)

    def cell(self) -> str:
        spread = f" ({min(self.steady):.3g}–{max(self.steady):.3g})" if len(self.steady) > 1 else ""
        return f"{self.median:.3g}{spread}"


def interleaved(
    routes: dict[str, Callable[[int], Any]],
    reps: int,
    calls_per_rep: dict[str, int] | None = None,
    outputs: dict[str, list[Any]] | None = None,
) -> dict[str, Timing]:
    """Time every route: one first call each (seed 0), then ``reps`` rounds A, B, A, B, …

    ``calls_per_rep`` lets a fast route make several calls per round (a slow one makes one);
    each call gets a fresh seed. With ``outputs`` given, every route's outputs are kept.
    """
    calls_per_rep = calls_per_rep or {}
    first, first_compile = {}, {}
    steady = {name: [] for name in routes}
    steady_compile = dict.fromkeys(routes, 0.0)
    for name, fn in routes.items():
        out, seconds, compile_s = timed(lambda fn=fn: fn(0))
        first[name], first_compile[name] = seconds, compile_s
        print(f"  {name}: first call {seconds:.2f} s (compiling {compile_s:.2f} s)", flush=True)
        if outputs is not None:
            outputs.setdefault(name, []).append(out)
    seed = 1
    for rep in range(reps):
        for name, fn in routes.items():
            for _ in range(calls_per_rep.get(name, 1)):
                out, seconds, compile_s = timed(lambda fn=fn, seed=seed: fn(seed))
                seed += 1
                steady[name].append(seconds)
                steady_compile[name] += compile_s
                if outputs is not None:
                    outputs.setdefault(name, []).append(out)
        summary = ", ".join(f"{n} {steady[n][-1]:.3g} s" for n in routes)
        print(f"  repetition {rep + 1}/{reps}: {summary}", flush=True)
    return {
        name: Timing(first[name], first_compile[name], steady[name], steady_compile[name])
        for name in routes
    }


# ------------------------------------------------------------------------------------------
# Parameters of a layered SpinNetwork as dense layers, for either parameter layout.


def dense_layers(net, params) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """``(W_in, (W_1, …), (h_1, h_2, …))`` of a layered spin network's parameters.

    Works for every layout the layered ``SpinNetwork`` has had or may have:

    - edge list ``{"couplings": (num_edges,), "fields": (n,), "input_weights": (num_in_edges,)}``,
      scattered by the network's own ``edges`` / ``input_edges`` (``SpinNetwork.layered`` lists
      them row-major: input edges ``(a, i)`` over inputs × first layer, then the couplings layer
      pair by layer pair); a network without them is read through its ``to_graph()``;
    - dense couplings ``{"couplings": (J_1, …), "fields": (n,), "input_weights": (I, n_1)}``;
    - ``LayeredNetwork``-like ``{"weights": (W_in, W_1, …), "biases": (b_1, …)}``.

    Also applies to gradients and standard errors, which are shaped like the parameters.
    """
    if "weights" in params:
        weights = tuple(params["weights"])
        biases = params["biases"] if "biases" in params else params["fields"]
        if not isinstance(biases, (tuple, list)):  # one flat field vector
            biases = _split(biases, [w.shape[1] for w in weights])
        return weights[0], weights[1:], tuple(biases)
    if isinstance(params["couplings"], (tuple, list)):
        w_in, couplings = params["input_weights"], tuple(params["couplings"])
        sizes = [w_in.shape[1]] + [c.shape[1] for c in couplings]
        return w_in, couplings, _split(params["fields"], sizes)
    graph = net if hasattr(net, "input_edges") else net.to_graph()
    layers = [np.asarray(block) for block in graph.blocks]
    offsets = [int(layer[0]) for layer in layers]
    sizes = [len(layer) for layer in layers]
    layer_of = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    a, i = np.asarray(graph.input_edges).reshape(-1, 2).T
    w_in = jnp.zeros((graph.num_inputs, sizes[0]), DTYPE)
    w_in = w_in.at[a, i - offsets[0]].set(params["input_weights"])
    edges = np.sort(np.asarray(graph.edges).reshape(-1, 2), axis=1)
    couplings = []
    for k in range(len(layers) - 1):
        pick = layer_of[edges[:, 0]] == k
        rows, cols = edges[pick].T
        w = jnp.zeros((sizes[k], sizes[k + 1]), DTYPE)
        couplings.append(
            w.at[rows - offsets[k], cols - offsets[k + 1]].set(params["couplings"][pick])
        )
    return w_in, tuple(couplings), _split(params["fields"], sizes)


def layered_params(net, w_in, couplings, fields):
    """The inverse of :func:`dense_layers`: dense layers into ``net``'s own layout."""
    template = net.init_params(jax.random.key(0))
    if "weights" in template:
        name = "biases" if "biases" in template else "fields"
        return {"weights": (w_in, *couplings), name: tuple(fields)}
    flat_fields = jnp.concatenate(fields)
    if isinstance(template["couplings"], (tuple, list)):
        return {"couplings": tuple(couplings), "fields": flat_fields, "input_weights": w_in}
    graph = net if hasattr(net, "input_edges") else net.to_graph()
    offsets = np.cumsum([0] + [h.shape[0] for h in fields])
    layer_of = np.concatenate([np.full(h.shape[0], k) for k, h in enumerate(fields)])
    edges = np.sort(np.asarray(graph.edges).reshape(-1, 2), axis=1)
    values = np.zeros(len(edges), np.float32)
    for k, w in enumerate(couplings):
        pick = layer_of[edges[:, 0]] == k
        rows, cols = edges[pick].T
        values[pick] = np.asarray(w)[rows - offsets[k], cols - offsets[k + 1]]
    a, i = np.asarray(graph.input_edges).reshape(-1, 2).T
    return {
        "couplings": jnp.asarray(values),
        "fields": flat_fields,
        "input_weights": jnp.asarray(np.asarray(w_in)[a, i]),
    }


def layout_name(params) -> str:
    if "weights" in params:
        return "dense (weights, biases)"
    if isinstance(params["couplings"], (tuple, list)):
        return "dense couplings"
    return "edge list"


def _split(vector, sizes) -> tuple[jax.Array, ...]:
    bounds = np.cumsum([0, *sizes])
    return tuple(vector[bounds[k] : bounds[k + 1]] for k in range(len(sizes)))


def with_random_fields(net, params, rng_key, scale=0.2):
    """The parameters with random fields (biases) of standard deviation ``scale``."""
    w_in, couplings, fields = dense_layers(net, params)
    keys = jax.random.split(rng_key, len(fields))
    fields = [
        scale * jax.random.normal(k, h.shape, DTYPE) for k, h in zip(keys, fields, strict=True)
    ]
    return layered_params(net, w_in, couplings, fields)


# ------------------------------------------------------------------------------------------
# 1. ThermalCovariance against a minimal dense block Gibbs with the same covariance sums.

S1_LAYERS = (64, 200, 10)
S1_EXAMPLES = 32
S1_CHAINS = 8
S1_DRAWS = 200


def _draw(key, field, temperature):
    """Heat-bath draw of ±1 spins with p(+1) = sigmoid(2 field / T)."""
    p_up = jax.nn.sigmoid(2.0 * field / temperature)
    return jnp.where(jax.random.uniform(key, field.shape, field.dtype) < p_up, 1.0, -1.0).astype(
        field.dtype
    )


def minimal_covariance_gradient(
    rng_key, w_in, couplings, fields, x, targets, temperature, num_chains, num_draws
):
    """The covariance gradient −(1/T)·mean_b Cov_b(C, ∂θE) by a dense block Gibbs.

    E = −Σ_k h_k·s_k − Σ_k s_k·W_k s_{k+1} − x·W_in s_1, C = ½Σ(1 + y²) − y·s_L. All examples
    × chains at once; one sweep redraws layer 1, 2, … in order from sigmoid(2·field/T) (as the
    estimator's blocks do); chains start from random spins; every sweep is a draw. Per example
    it accumulates Σ C, Σ s_k, Σ C s_k, Σ s_k s_{k+1}ᵀ and Σ C s_k s_{k+1}ᵀ over draws.

    Returns ``((g_W_in, (g_W_k, …), (g_h_k, …)), loss)``.
    """
    batch = x.shape[0]
    num_layers = len(fields)
    key_init, key_scan = jax.random.split(rng_key)
    input_field = (x @ w_in)[:, None, :]  # (B, 1, n_1), once
    init_keys = jax.random.split(key_init, num_layers)
    layers = [
        jax.random.rademacher(k, (batch, num_chains, h.shape[0]), dtype=x.dtype)
        for k, h in zip(init_keys, fields, strict=True)
    ]
    offset = 0.5 * jnp.sum(1.0 + targets**2, axis=1)  # (B,)

    def stats(layers):
        cost = offset[:, None] - jnp.einsum("bo,bco->bc", targets, layers[-1])  # (B, C)
        s_sum = [jnp.sum(s, axis=1) for s in layers]
        cs_sum = [jnp.einsum("bc,bci->bi", cost, s) for s in layers]
        ss_sum = [
            jnp.einsum("bci,bcj->bij", a, b) for a, b in zip(layers[:-1], layers[1:], strict=True)
        ]
        css_sum = [
            jnp.einsum("bc,bci,bcj->bij", cost, a, b)
            for a, b in zip(layers[:-1], layers[1:], strict=True)
        ]
        return jnp.sum(cost, axis=1), s_sum, cs_sum, ss_sum, css_sum

    def sweep(carry, key):
        layers, sums = carry
        keys = jax.random.split(key, num_layers)
        layers = list(layers)
        for k in range(num_layers):
            field = fields[k] + (input_field if k == 0 else 0.0)
            if k > 0:
                field = field + layers[k - 1] @ couplings[k - 1]
            if k < num_layers - 1:
                field = field + layers[k + 1] @ couplings[k].T
            layers[k] = _draw(keys[k], field, temperature)
        sums = jax.tree_util.tree_map(jnp.add, sums, stats(layers))
        return (layers, sums), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, stats(layers))
    (_, sums), _ = jax.lax.scan(sweep, (layers, zeros), jax.random.split(key_scan, num_draws))
    n = num_chains * num_draws
    c_mean = sums[0] / n  # (B,)
    s_sum, cs_sum, ss_sum, css_sum = sums[1:]
    # ∂E/∂h_k = −s_k, ∂E/∂W_k = −s_k s_{k+1}ᵀ, ∂E/∂W_in = −x s_1ᵀ; Cov_b(C, −u) = −(⟨Cu⟩ − ⟨C⟩⟨u⟩),
    # so −(1/T) mean_b Cov_b(C, ∂θE) = (1/T) mean_b (⟨Cu⟩_b − ⟨C⟩_b ⟨u⟩_b).
    scale = 1.0 / (temperature * batch)

    def centred(cu, u):
        return cu / n - c_mean.reshape((-1,) + (1,) * (u.ndim - 1)) * u / n

    g_fields = tuple(
        scale * jnp.sum(centred(cu, u), axis=0) for cu, u in zip(cs_sum, s_sum, strict=True)
    )
    g_couplings = tuple(
        scale * jnp.sum(centred(cu, u), axis=0) for cu, u in zip(css_sum, ss_sum, strict=True)
    )
    g_in = scale * x.T @ centred(cs_sum[0], s_sum[0])
    return (g_in, g_couplings, g_fields), jnp.mean(c_mean)


minimal_covariance_gradient_jit = jax.jit(
    minimal_covariance_gradient, static_argnames=("num_chains", "num_draws")
)


def _agreement_row(label, a, b, stderr, losses, loss_stderr) -> str:
    """A table row: |a − b|/stderr over the components where stderr > 0, and the losses."""
    ok = stderr > 0
    z = np.abs(a - b)[ok] / stderr[ok]
    return (
        f"| {label} | {z.size} | {z.max():.2f} | {np.sqrt(np.mean(z**2)):.2f} | "
        f"{np.mean(z > 3):.4f} | {np.linalg.norm(a - b) / np.linalg.norm(a):.3f} | "
        f"{losses[0]:.4f} vs {losses[1]:.4f} ({abs(losses[0] - losses[1]) / loss_stderr:.2f}) |"
    )


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def _relative_mcse(estimates) -> float:
    """Median over calls of the estimates' ``relative_stderr`` diagnostic."""
    return float(np.median([float(e.diagnostics["relative_stderr"]) for e in estimates]))


def section_thermal_covariance(args) -> list[str]:
    temperature = float(args.temperature)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    net = SpinNetwork.layered(S1_LAYERS)
    key_p, key_f, key_x, key_y = jax.random.split(jax.random.key(0), 4)
    params = with_random_fields(net, net.init_params(key_p), key_f)
    x = jax.random.uniform(key_x, (S1_EXAMPLES, S1_LAYERS[0]), DTYPE)
    targets = net.encode_labels(jax.random.randint(key_y, (S1_EXAMPLES,), 0, S1_LAYERS[-1]))
    sampling = Sampling(method="gibbs", num_chains=S1_CHAINS, num_samples=S1_DRAWS, num_warmup=0)
    # The same sums as the minimal loop: the plain series (the target's comparison); the
    # default, with conditional expectations, is timed beside it.
    estimator = ThermalCovariance(net, temperature, sampling, rao_blackwell=False)
    conditional = ThermalCovariance(net, temperature, sampling)
    w_in, couplings, fields = dense_layers(net, params)
    layout = layout_name(params)
    print(f"section 1: {net.num_spins} spins, parameter layout: {layout}", flush=True)

    def project(seed):
        return estimator(params, x, targets, jax.random.key(seed))

    def minimal(seed):
        return minimal_covariance_gradient_jit(
            jax.random.key(seed), w_in, couplings, fields, x, targets, temperature,
            num_chains=S1_CHAINS, num_draws=S1_DRAWS,
        )  # fmt: skip

    names = (
        "ThermalCovariance (layered block Gibbs), plain sums",
        "minimal dense block Gibbs (lax.scan)",
        "ThermalCovariance, conditional expectations (the default)",
    )
    outputs: dict[str, list[Any]] = {}
    timings = interleaved(
        {
            names[0]: project,
            names[1]: minimal,
            names[2]: lambda seed: conditional(params, x, targets, jax.random.key(seed)),
        },
        reps,
        calls_per_rep={names[1]: 5},
        outputs=outputs,
    )
    # Same work? Every estimate against the mean of the K minimal calls (each draws as many
    # states of the same chains, so each has the estimator's MCSE: combined standard error
    # MCSE·√(1 + 1/K)) and, as a control with the same denominator, the first two estimates
    # against each other (√2·MCSE). The MCSE is pooled over the estimator's calls (RMS): one
    # call's per-component MCSE comes from the ESS of 8 × 200 draws and is itself noisy, which
    # gives |difference|/MCSE over 15k components heavier tails than a Gaussian's. The
    # vs-minimal columns should look like the control's.
    estimates = outputs[names[0]]
    grads = [flat(dense_layers(net, e.grad)) for e in estimates]
    se = np.sqrt(np.mean([flat(dense_layers(net, e.stderr)) ** 2 for e in estimates], axis=0))
    loss_se = float(np.sqrt(np.mean([float(e.loss_stderr) ** 2 for e in estimates])))
    losses = [float(e.loss) for e in estimates]
    minimal_grads = [flat(g) for g, _ in outputs[names[1]]]
    k = len(minimal_grads)
    g_min = np.mean(minimal_grads, axis=0)
    loss_min = float(np.mean([float(loss) for _, loss in outputs[names[1]]]))
    check_rows = [
        _agreement_row(
            f"estimate {i + 1} vs mean of {k} minimal calls",
            g,
            g_min,
            se * np.sqrt(1 + 1 / k),
            (loss, loss_min),
            loss_se * np.sqrt(1 + 1 / k),
        )
        for i, (g, loss) in enumerate(zip(grads, losses, strict=True))
    ]
    if len(estimates) > 1:
        check_rows.append(
            _agreement_row(
                "control: estimate 1 vs estimate 2",
                grads[0],
                grads[1],
                se * np.sqrt(2),
                (losses[0], losses[1]),
                loss_se * np.sqrt(2),
            )
        )
    relative_mcse = np.linalg.norm(se) / np.linalg.norm(grads[0])
    print("  same work? " + "\n    ".join(check_rows), flush=True)
    ratio = timings[names[0]].median / timings[names[1]].median
    rows = [
        f"| {name} | {t.first:.3g} | {t.first_compile:.3g} | {t.cell()} | {len(t.steady)} | "
        f"{t.steady_compile:.2g} | {t.median / timings[names[1]].median:.3g} |"
        for name, t in timings.items()
    ]
    return [
        "### 1. ThermalCovariance vs a minimal dense block Gibbs: "
        f"SpinNetwork.layered({S1_LAYERS}), "
        f"{S1_EXAMPLES} examples × {S1_CHAINS} chains × {S1_DRAWS} draws, no warm-up, "
        f"T = {temperature:g}",
        "",
        f"Parameters in the {layout} layout ({flat(params).size} numbers); inputs uniform in "
        "[0, 1], ±1 one-hot targets, random fields (sd 0.2). One call = sampling and the "
        "covariance gradient of the whole batch (the estimator's call also computes its "
        "MCSE, ESS and R-hat, which the minimal loop does not). "
        f"{reps} interleaved repetition(s): one estimator call and 5 minimal calls each.",
        "",
        "| route | first (s) | of which compiling (s) | steady median (min–max) (s) | "
        "steady calls | compiling in steady calls (s) | ÷ minimal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Estimator / minimal, steady medians: **{ratio:.3g}×** (the same sums); with "
        "conditional expectations: "
        f"{timings[names[2]].median / timings[names[1]].median:.3g}×, relative MCSE "
        f"{_relative_mcse(outputs[names[2]]):.3f} against {_relative_mcse(estimates):.3f}.",
        "",
        "Same work? Gradients compared component by component in units of the estimator's "
        "MCSE (pooled over its calls by RMS; combined with the minimal mean's as "
        "MCSE·√(1 + 1/K), two estimates as √2·MCSE). The MCSE of one component is itself "
        "estimated, so the tails over 15k components are heavier than a Gaussian's (whose "
        f"largest of {se.size} would be ≈ {np.sqrt(2 * np.log(se.size)):.1f}, RMS 1, fraction "
        "above 3 0.0027): the rows against the minimal loop should look like the control row "
        "(two estimates of the estimator itself). "
        f"‖MCSE‖/‖gradient‖ = {relative_mcse:.3f}.",
        "",
        "| comparison | components | largest abs(difference)/stderr | RMS | fraction above 3 | "
        "‖difference‖/‖gradient‖ | loss vs loss (difference/stderr) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *check_rows,
        "",
    ]


# ------------------------------------------------------------------------------------------
# 2. Block Gibbs alone on a 500-1000-500 network (all layers free): four routes.

S2_LAYERS = (500, 1000, 500)
S2_CHAINS = 8
S2_SWEEPS = 100
S2_TEMPERATURE = 1.0


def gibbs_problem(seed=0):
    rng = np.random.default_rng(seed)
    weights = tuple(
        jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)), dtype=DTYPE)
        for a, b in zip(S2_LAYERS[:-1], S2_LAYERS[1:], strict=True)
    )
    fields = jnp.asarray(rng.normal(0, 0.1, sum(S2_LAYERS)), dtype=DTYPE)
    bounds = np.cumsum((0, *S2_LAYERS))
    layers = [tuple(range(bounds[k], bounds[k + 1])) for k in range(len(S2_LAYERS))]
    colours = (layers[0] + layers[2], layers[1])  # two-colour blocks
    return weights, fields, bounds, layers, colours


def layered_edges(layers) -> list[tuple[int, int]]:
    """Row-major couplings layer pair by layer pair (the order of ``SpinNetwork.layered``)."""
    return [(i, j) for a, b in zip(layers[:-1], layers[1:], strict=True) for i in a for j in b]


class ProjectNetwork(NamedTuple):
    label: str  # short name for the table
    description: str
    net: Any
    params: Any
    x: jax.Array  # (1, num_inputs)
    build_seconds: float


def project_networks(layers, colours, weights, fields, with_graph: bool) -> list[ProjectNetwork]:
    """The 500-1000-500 network in the project's model API, every layer free.

    - ``SpinNetwork.layered((1, 500, 1000, 500))`` with its one input at 0: the three layers
      are free spins and the input acts on nothing. Its blocks are its layers (a sweep is three
      block updates: the model fixes them), its couplings dense matrices (or, before the
      dense layout, an edge list) in the network's own layout;
    - with ``with_graph``, also the general ``SpinNetwork(num_inputs=0, edges=…)`` with the
      1M couplings as an edge list and the two colours as blocks (the sparse path).
    """
    out = []
    start = time.perf_counter()
    net = SpinNetwork.layered((1, *S2_LAYERS))
    w_in = jnp.zeros((1, S2_LAYERS[0]), DTYPE)
    params = layered_params(net, w_in, weights, _split(fields, S2_LAYERS))
    out.append(
        ProjectNetwork(
            f"SpinNetwork.layered((1, {', '.join(map(str, S2_LAYERS))})), x = 0, "
            f"{layout_name(params)}, {len(net.blocks)} blocks",
            f"SpinNetwork.layered((1, {', '.join(map(str, S2_LAYERS))})) with its single input "
            f"at 0 (so all {sum(S2_LAYERS)} spins free and no input field), parameters in its "
            f"{layout_name(params)} layout, its {len(net.blocks)} layer blocks",
            net,
            params,
            jnp.zeros((1, 1), DTYPE),
            time.perf_counter() - start,
        )
    )
    if with_graph:
        start = time.perf_counter()
        graph = SpinNetwork(
            num_inputs=0,
            num_spins=int(sum(S2_LAYERS)),
            edges=tuple(layered_edges(layers)),
            input_edges=(),
            output_units=layers[-1],
            blocks=colours,
        )
        graph_params = {
            "couplings": jnp.concatenate([w.ravel() for w in weights]),
            "fields": fields,
            "input_weights": jnp.zeros((0,), DTYPE),
        }
        out.append(
            ProjectNetwork(
                "SpinNetwork(num_inputs=0, edge list), 2 colour blocks",
                "SpinNetwork(num_inputs=0, edges=the 1M couplings, blocks=the two colours): "
                "the general graph network, couplings as an edge list",
                graph,
                graph_params,
                jnp.zeros((1, 0), DTYPE),
                time.perf_counter() - start,
            )
        )
    return out


def plain_gibbs_floor(rng_key, start, weights, fields, bounds, temperature, num_sweeps):
    """Two-colour block Gibbs by dense matmuls: layers 1 and 3 from layer 2, then layer 2."""
    w1, w2 = weights
    h1, h2, h3 = (fields[bounds[k] : bounds[k + 1]] for k in range(3))
    s1, s2, s3 = (start[:, bounds[k] : bounds[k + 1]] for k in range(3))

    def sweep(carry, key):
        s1, s2, s3 = carry
        k1, k2, k3 = jax.random.split(key, 3)
        s1 = _draw(k1, h1 + s2 @ w1.T, temperature)
        s3 = _draw(k3, h3 + s2 @ w2, temperature)
        s2 = _draw(k2, h2 + s1 @ w1 + s3 @ w2.T, temperature)
        return (s1, s2, s3), jnp.concatenate([s1, s2, s3], axis=1)

    _, states = jax.lax.scan(sweep, (s1, s2, s3), jax.random.split(rng_key, num_sweeps))
    return jnp.swapaxes(states, 0, 1)  # (chain, sweep, n)


plain_gibbs_floor_jit = jax.jit(plain_gibbs_floor, static_argnames=("bounds", "num_sweeps"))


def thrml_route(weights, fields, layers, colours, num_chains, num_sweeps, temperature):
    """thrml's Ising model on the same graph: returns ``(run(seed), build seconds, version)``.

    ``IsingEBM`` (energy −β(Σ b s + Σ J s s), so β = 1/T, biases = fields, weights = the
    couplings of the edge list), ``IsingSamplingProgram`` with the two colour blocks as free
    blocks, random starts, ``sample_states`` over a ``SamplingSchedule``; chains by
    ``jax.vmap``; the program goes into ``eqx.filter_jit`` as an argument (not a constant).
    ``sample_with_observation`` records the warm-up state first and then one state per
    ``steps_per_sample`` sweeps, so ``n_warmup=1, n_samples=num_sweeps`` is exactly
    ``num_sweeps`` sweeps with every one recorded.
    """
    import equinox as eqx
    import thrml
    from thrml.models import IsingEBM, IsingSamplingProgram

    start = time.perf_counter()
    nodes = [thrml.SpinNode() for _ in range(int(sum(S2_LAYERS)))]
    edges = [(nodes[i], nodes[j]) for i, j in layered_edges(layers)]
    model = IsingEBM(
        nodes,
        edges,
        fields,
        jnp.concatenate([w.ravel() for w in weights]),
        jnp.asarray(1.0 / temperature, DTYPE),
    )
    blocks = [thrml.Block([nodes[i] for i in colour]) for colour in colours]
    program = IsingSamplingProgram(model, blocks, clamped_blocks=[])
    schedule = thrml.SamplingSchedule(n_warmup=1, n_samples=num_sweeps, steps_per_sample=1)
    everything = [thrml.Block(nodes)]
    build = time.perf_counter() - start

    @eqx.filter_jit
    def run_chains(program, keys, init_states):
        def one(key, init):
            return thrml.sample_states(key, program, schedule, init, [], everything)[0]

        return jax.vmap(one)(keys, init_states)

    def run(seed):
        key_init, key_run = jax.random.split(jax.random.key(seed))
        # Random starts, like the other routes. (thrml's hinton_init costs ~2 s a call here:
        # its eqx.filter_jit hashes the model, whose 1M edges are a static Python list.)
        init = [
            jax.random.bernoulli(k, 0.5, (num_chains, len(block.nodes)))
            for k, block in zip(jax.random.split(key_init, len(blocks)), blocks, strict=True)
        ]
        return run_chains(program, jax.random.split(key_run, num_chains), init)

    return run, build, thrml.__version__


def section_block_gibbs(args) -> list[str]:
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    weights, fields, bounds, layers, colours = gibbs_problem()
    n = int(sum(S2_LAYERS))
    start = jnp.asarray(np.random.default_rng(1).choice([-1.0, 1.0], (S2_CHAINS, n)), dtype=DTYPE)
    bounds_t = tuple(int(b) for b in bounds)

    def energy(s, context):
        (w1, w2), h = context
        s1, s2, s3 = (s[bounds_t[k] : bounds_t[k + 1]] for k in range(3))
        return -(s1 @ w1 @ s2) - (s2 @ w2 @ s3) - h @ s

    kernel = samplers.block_gibbs(energy, colours)

    def samplers_route(seed):
        return samplers.sample(
            jax.random.key(seed), kernel, start, (weights, fields), S2_TEMPERATURE,
            num_samples=S2_SWEEPS, num_warmup=0,
        ).samples  # fmt: skip

    networks = project_networks(layers, colours, weights, fields, with_graph=args.graph)
    sampling = Sampling(method="gibbs", num_chains=S2_CHAINS, num_samples=S2_SWEEPS, num_warmup=0)
    routes = {
        "(a) samplers.block_gibbs, dense energy, 2 colour blocks, samplers.sample": samplers_route
    }
    for index, network in enumerate(networks):
        print(f"section 2: {network.description}; built in {network.build_seconds:.1f} s")
        targets = jnp.zeros((1, network.net.num_outputs), DTYPE)

        def project_route(seed, network=network, targets=targets):
            return draw_states(
                network.net, sampling, network.params, network.x, targets, 0.0,
                S2_TEMPERATURE, jax.random.key(seed),
            ).states  # fmt: skip

        routes[f"(b{'′' * index}) thermoeqprop draw_states: {network.label}"] = project_route

    def floor_route(seed):
        return plain_gibbs_floor_jit(
            jax.random.key(seed), start, weights, fields, bounds_t, S2_TEMPERATURE,
            num_sweeps=S2_SWEEPS,
        )  # fmt: skip

    thrml_note = ""
    try:
        run_thrml, thrml_build, version = thrml_route(
            weights, fields, layers, colours, S2_CHAINS, S2_SWEEPS, S2_TEMPERATURE
        )
        routes[f"(c) thrml {version} IsingSamplingProgram"] = run_thrml
        thrml_note = f"thrml's program was built in {thrml_build:.1f} s (Python, not timed)."
        print(f"  thrml {version}: program built in {thrml_build:.1f} s", flush=True)
    except ImportError as error:
        thrml_note = f"thrml not importable ({error}); route (c) skipped."
        print("  " + thrml_note, flush=True)
    floor_name = "(d) plain dense matmul lax.scan (floor)"
    routes[floor_name] = floor_route
    timings = interleaved(routes, reps, calls_per_rep={floor_name: 3})
    sweeps = S2_CHAINS * S2_SWEEPS
    num_couplings = sum(a * b for a, b in zip(S2_LAYERS[:-1], S2_LAYERS[1:], strict=True))
    floor = timings[floor_name].median
    rows = [
        f"| {name} | {t.first:.3g} | {t.first_compile:.3g} | {t.cell()} | {len(t.steady)} | "
        f"{sweeps / t.median:.4g} | {sweeps * n / t.median / 1e6:.4g} | {t.median / floor:.3g} |"
        for name, t in timings.items()
    ]
    return [
        f"### 2. Block Gibbs alone: {'-'.join(map(str, S2_LAYERS))} spins, all layers free, "
        f"{num_couplings / 1e6:g}M dense couplings, "
        f"{S2_CHAINS} chains × {S2_SWEEPS} sweeps, T = {S2_TEMPERATURE:g}",
        "",
        "A sweep redraws colour 1 (layers 1 and 3) then colour 2 (layer 2), or, where the "
        "model's blocks are its layers, layer 1, 2, 3 in turn (the same law, one more gradient "
        "per sweep); every route records all states (chain × sweep × spins). Couplings "
        "N(0, 1/fan-in), fields N(0, 0.1). "
        + "".join(
            f"(b{'′' * i}) samples {network.description}, built in "
            f"{network.build_seconds:.1f} s (not timed). "
            for i, network in enumerate(networks)
        )
        + "Calls of (a) and (b) include samplers.sample's input checks, as every call of the "
        "project does. "
        f"{thrml_note} {reps} interleaved repetition(s) (the floor: 3 calls per repetition).",
        "",
        "| route | first (s) | of which compiling (s) | steady median (min–max) (s) | "
        "steady calls | sweeps / s (all chains) | spin updates / s (millions) | ÷ floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


# ------------------------------------------------------------------------------------------
# 3. The default `thermoeqprop train` epoch against a T = 0 EP epoch.


S3_SIZES = (64, 128, 10)  # the default network of `thermoeqprop train`


S3_EPOCHS = 3  # per run: the first compiles, the later ones are the steady state


def _draws_parts(spec: str) -> tuple[int, int, int, set[str]]:
    """``CxN[+W][,jumps][,f32][,is][,nofb][,raw][,top][,one]`` (``--draws``): chains, warm-up
    (default 50), draws, and the flags: mode jumps, float32 sampler arithmetic, importance
    sampling (``--sampler importance``: C groups of N weighted draws, W pilot draws per group
    and round, Neyman allocation at its default share, heavy-tailed rows drawn again by HMC,
    Pareto-smoothed weights), without that HMC fallback (``nofb``: ``--pareto-fallback
    inf``), with the raw weights (``raw``: ``--pareto-smoothing off``), with rounds of extra
    rows while a batch's relative MCSE exceeds 0.2 (``top``: ``--target-relative-stderr 0.2``,
    train's default with importance sampling since 2026-12-07), with one round (``one``:
    ``--target-relative-stderr inf``); without ``is`` the route is HMC (``--sampler hmc``)."""
    match = re.fullmatch(
        r"(\d+)x(\d+)(?:\+(\d+))?((?:,jumps|,f32|,is|,nofb|,raw|,top|,one)*)", spec
    )
    if match is None:
        raise SystemExit(
            f"--draws {spec!r}: expected CHAINSxDRAWS[+WARMUP] and flags among ,jumps ,f32 ,is "
            ",nofb ,raw ,top ,one, e.g. 2x300 or 4x150+50 or 2x450+100,f32 or 2x256+128,is or "
            "2x80+40,is,nofb"
        )
    chains, draws, warmup, flags = match.groups()
    return int(chains), int(warmup or 50), int(draws), set(flags.split(",")[1:])


def _draws_spec(spec: str) -> str:
    """``spec`` checked at parsing (argparse ``type``), so a bad one stops the run at once."""
    _draws_parts(spec)
    return spec


def _draws_route(spec: str) -> str:
    chains, warmup, draws, flags = _draws_parts(spec)
    words = {"jumps": ", mode jumps", "f32": ", float32 sampler", "is": ", importance sampling",
             "nofb": ", no HMC fallback", "raw": ", raw weights",
             "top": ", rows added to 0.2", "one": ", one round"}  # fmt: skip
    return (
        f"thermal, {chains} × ({warmup} + {draws})"
        + ("" if "is" in flags else ", HMC")
        + "".join(word for flag, word in words.items() if flag in flags)
    )


def _draws_command(spec: str) -> list[str]:
    chains, warmup, draws, flags = _draws_parts(spec)
    command = ["--num-chains", str(chains), "--num-warmup", str(warmup),
               "--num-samples", str(draws)]  # fmt: skip
    return (command + (["--mode-jumps", "on"] if "jumps" in flags else [])
            + (["--sampler-dtype", "float32"] if "f32" in flags else [])
            + (["--pareto-fallback", "inf"] if "nofb" in flags else [])
            + (["--pareto-smoothing", "off"] if "raw" in flags else [])
            + (["--target-relative-stderr", "0.2"] if "top" in flags else [])
            + (["--target-relative-stderr", "inf"] if "one" in flags else [])
            + ["--sampler", "importance" if "is" in flags else "hmc"])  # fmt: skip


def _train_run(command: list[str], seed: int, folder: str) -> list[dict[str, float]]:
    """A short ``thermoeqprop train`` run (its defaults plus ``command``) in this process; its
    metrics lines, one per epoch (``epoch_seconds`` is synchronised: the epoch's work done)."""
    import contextlib
    import io

    from thermoeqprop.cli import main as cli_main

    argv = ["train", *command, "--epochs", str(S3_EPOCHS), "--seed", str(seed),
            "--results-dir", folder]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(argv)
    if code != 0:
        raise RuntimeError(f"thermoeqprop {' '.join(argv)} exited with {code}")
    return _metrics_lines(folder)


def _metrics_lines(folder: str) -> list[dict[str, float]]:
    """The records of a run folder's metrics.jsonl, one per epoch."""
    import json

    with open(os.path.join(folder, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _baseline_tree(revision: str, root: str) -> str:
    """The package's files at git ``revision`` (``git archive``), unpacked under ``root``."""
    import io
    import subprocess
    import tarfile

    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", repository, "archive", "--format=tar", revision],
                             capture_output=True, check=False)  # fmt: skip
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision!r}: {archive.stderr.decode().strip()}")
    tree = os.path.join(root, "baseline")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _baseline_run(tree: str, seed: int, folder: str) -> list[dict[str, float]]:
    """The default ``thermoeqprop train`` of the code in ``tree``, as :func:`_train_run` runs
    today's, in a child process (same environment, threads and core pinning; its imports come
    from ``tree``); its metrics lines."""
    import subprocess

    argv = ["train", "--epochs", str(S3_EPOCHS), "--seed", str(seed), "--results-dir", folder]
    code = ("import sys, thermoeqprop.cli as c; assert c.__file__.startswith(sys.argv[1]); "
            "sys.exit(c.main(sys.argv[2:]))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": tree, "THERMOEQPROP_X64": "1"}
    done = subprocess.run([sys.executable, "-c", code, tree, *argv], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"baseline train exited with {done.returncode}: {done.stderr[-2000:]}")
    return _metrics_lines(folder)


def _median_of(records: list[dict], key: str) -> str:
    """The median of ``key`` over the records that have it, formatted ('–' if none has)."""
    values = [r[key] for r in records if key in r]
    return f"{statistics.median(values):.3g}" if values else "–"


def _matmul_gflops(m: int, k: int, n: int, dtype, calls: int = 20) -> float:
    """GFLOP/s of a plain jitted (m, k) @ (k, n) product, median of ``calls`` steady calls."""
    a = jnp.ones((m, k), dtype)
    b = jnp.ones((k, n), dtype)
    product = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(product(a, b))
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(product(a, b))
        seconds.append(time.perf_counter() - start)
    return 2.0 * m * k * n / statistics.median(seconds) / 1e9


def section_train_epoch(args) -> list[str]:
    """The default ``thermoeqprop train`` epoch (covariance estimator, T = 0.02, HMC) against
    a T = 0 EP epoch (``--estimator ep``) of the same network and data, both float64 as the
    command runs them, interleaved epoch by epoch; each call is a fresh one-epoch run in this
    process (its first call compiles). The work of a thermal epoch is counted analytically
    (useful flops: every coupling matrix twice per gradient, the input field once per example
    and batch, the statistics' passes over the draws) and divided by the epoch's time."""
    import tempfile

    from thermoeqprop.data import load_dataset
    from thermoeqprop.options import TrainOptions

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # the command's default precision
    try:
        reps = args.reps or (1 if args.quick else 3)
        routes = {"thermal (default train)": []}
        for spec in args.draws or []:
            routes[_draws_route(spec)] = _draws_command(spec)
        routes["T = 0 EP (--estimator ep)"] = ["--estimator", "ep"]
        if args.baseline:
            routes[f"default train at {args.baseline} (child process)"] = None
        first: dict[str, list[float]] = {name: [] for name in routes}
        steady: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
        with tempfile.TemporaryDirectory() as root:
            tree = _baseline_tree(args.baseline, root) if args.baseline else None
            for seed in range(reps):
                for i, (name, command) in enumerate(routes.items()):
                    folder = os.path.join(root, f"{i}-{seed}")
                    records = (_train_run(command, seed, folder) if command is not None
                               else _baseline_run(tree, seed, folder))  # fmt: skip
                    first[name].append(records[0]["epoch_seconds"])
                    steady[name].extend(records[1:])
                    times = ", ".join(f"{r['epoch_seconds']:.2f}" for r in records)
                    print(f"  {name}, seed {seed}: epochs {times} s", flush=True)
        num_train = len(load_dataset("digits").labels_train)
        gflops_large = _matmul_gflops(1024, 1024, 1024, jnp.float64)
        gflops_layer = _matmul_gflops(64, S3_SIZES[1], S3_SIZES[2], jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", previous)
    batches = num_train // 32
    default = TrainOptions()  # the default train's sampling, which the flop count is of
    chains, warmup, draws = default.num_chains, default.num_warmup, default.num_samples
    leapfrog = default.hmc_steps
    couplings = sum(a * b for a, b in zip(S3_SIZES[1:-1], S3_SIZES[2:], strict=True))
    params = sum(a * b + b for a, b in zip(S3_SIZES[:-1], S3_SIZES[1:], strict=True))
    per_batch = (
        32 * chains * (warmup + draws) * leapfrog * 4 * couplings  # HMC gradients
        + 2 * 32 * S3_SIZES[0] * S3_SIZES[1]  # input field, once per example
        + 3 * 2 * 32 * chains * draws * params  # covariance statistics: three passes
    )
    epoch_flops = batches * per_batch
    # Without --sampler the default train draws by importance sampling (docs/cli/train.md),
    # whose work the HMC flop count below does not describe.
    hmc = default.sampler is not None and default.sampler != "importance"
    medians = {n: statistics.median(r["epoch_seconds"] for r in steady[n]) for n in routes}
    thermal, zero = medians["thermal (default train)"], medians["T = 0 EP (--estimator ep)"]
    rows, diagnostics = [], []
    for name in routes:
        seconds = [r["epoch_seconds"] for r in steady[name]]
        if "relative_stderr" in steady[name][0]:
            keys = ("relative_stderr", "relative_stderr_median", "diag_rhat_max",
                    "rank_rhat_max_last_batch")  # fmt: skip
            diagnostics.append(
                f"| {name} | " + " | ".join(_median_of(steady[name], key) for key in keys) + " |"
            )
        accuracy = statistics.median(r["test_accuracy"] for r in steady[name] if
                                     r["epoch"] == S3_EPOCHS)  # fmt: skip
        rows.append(
            f"| {name} | {statistics.median(first[name]):.2f} | {medians[name]:.3g} "
            f"({min(seconds):.3g}–{max(seconds):.3g}) | {len(seconds)} | {accuracy:.4f} | "
            f"{medians[name] / zero:.3g} |"
        )
    print(f"  thermal / T = 0 epoch: {thermal / zero:.3g}", flush=True)
    return [
        "### 3. The default `thermoeqprop train` epoch against a T = 0 EP epoch",
        "",
        f"digits, network {S3_SIZES}, batch 32 ({batches} batches an epoch), float64 as the "
        f"command runs; thermal: covariance estimator at T = {default.temperature}, "
        + (
            f"HMC with {chains} chains × ({warmup} warm-up + {draws} draws) of {leapfrog} "
            "leapfrog steps per example"
            if hmc
            else f"importance sampling with {chains} groups × (3 × {warmup} pilot + {draws}) "
            "weighted draws per example and Neyman allocation (8 more rows a batch), the "
            "default train without --sampler"
        )
        + (
            ", and the same with other draws (--draws: chains × (warm-up + draws), 'jumps': "
            "--mode-jumps on, 'f32': --sampler-dtype float32, 'is': --sampler importance, "
            "chains × draws weighted draws after rounds of chains × warm-up pilot draws)"
            if args.draws
            else ""
        )
        + f". Each call is a run of {S3_EPOCHS} "
        "epochs (its own seed) in this process, the routes' runs interleaved "
        f"({reps} repetition(s)); 'first epoch' is each run's first (compilation, and the "
        "optimizer step every new run compiles), 'steady' the median `epoch_seconds` "
        "(synchronised, from metrics.jsonl) of the later epochs of every run. Test accuracy "
        f"after {S3_EPOCHS} epochs, for orientation only.",
        "",
        "| route | first epoch, median over runs (s) | steady epoch median (min–max) (s) | "
        "steady epochs | "
        f"test accuracy after {S3_EPOCHS} epochs | ÷ T = 0 epoch |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Thermal epoch / T = 0 epoch, steady medians: **{thermal / zero:.3g}×**.",
        "",
        *(
            [
                "Gradient noise of the thermal routes in their steady epochs (medians over "
                "epochs of metrics.jsonl's relative MCSE over an epoch's batches, mean and "
                "median, of its worst batch's largest split R-hat and of the largest "
                "rank-normalised R-hat of its last batch; early in training, for orientation "
                "only):",
                "",
                "| route | relative MCSE, mean | relative MCSE, median batch | largest split "
                "R-hat, worst batch | largest rank R-hat, last batch |",
                "| --- | --- | --- | --- | --- |",
                *diagnostics,
                "",
            ]
            if len(diagnostics) > 1
            else []
        ),
        *(
            [
                f"Achieved: {epoch_flops / 1e9:.1f} GFLOP of useful work in a thermal epoch "
                "(HMC gradients: each coupling matrix between free layers twice per leapfrog "
                "step; the input field once per example and batch; three passes of the "
                f"covariance statistics over the draws) in {thermal:.3g} s: "
                f"**{epoch_flops / thermal / 1e9:.2f} GFLOP/s**, against {gflops_large:.1f} "
                f"GFLOP/s for a plain jitted 1024² float64 matmul and {gflops_layer:.2f} "
                f"GFLOP/s for one of the network's own shape (64 × {S3_SIZES[1]} @ "
                f"{S3_SIZES[1]} × {S3_SIZES[2]}).",
                "",
            ]
            if hmc
            else []
        ),
    ]


# ------------------------------------------------------------------------------------------
# 4. NUTS: samplers.sample(nuts) against NumPyro in steady state; the batched route.


S4_DIM = 10
S4_CHAINS = 8
S4_TARGETS = 32
S4_HMC_STEPS = 8  # leapfrog steps of the HMC rows (the main job's count)
S4_HMC_CALLS = 10  # calls per repetition of each HMC route


def correlated_gaussian(dim: int, seed: int = 0, scale: float = 1.0):
    """Precision and mean of a Gaussian with scales ``scale`` × (0.1 … 3) along random axes
    (samplers_bench.py's target, ``scale`` = 1, seed 0)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = scale * np.geomspace(0.1, 3.0, dim)
    precision = q @ np.diag(1.0 / scales**2) @ q.T
    return jnp.asarray(precision, DTYPE), jnp.asarray(rng.normal(size=dim), DTYPE)


def gaussian_energy(position, context):
    precision, mean = context
    d = position - mean
    return 0.5 * d @ precision @ d


def numpyro_nuts(rng_key, init, precision, mean, *, num_warmup, num_samples, hmc_steps=None):
    """NumPyro's ``MCMC(NUTS(potential_fn), chain_method="vectorized")``, warm-up + draws
    (``MCMC(HMC(potential_fn, num_steps=hmc_steps, trajectory_length=None))`` when
    ``hmc_steps`` is given: with NumPyro's default ``trajectory_length=2π`` beside
    ``num_steps``, its warm-up on this target collapsed in a trial of 2026-12-02, step sizes
    1e-29 and an inverse mass matrix of 2.4e-5, min bulk ESS 10 of 8,000 draws).

    Meant to run inside ``jax.jit``: ``MCMC.run`` builds new jitted closures on every call
    (its ``fori_collect`` loop), so called as is it compiles again each time; traced once
    under an outer ``jit``, the compiled program is reused for new keys and new targets of the
    same shapes. That is NumPyro's algorithm in steady state, its driver's recompilation left
    out (the plain call is timed beside it).
    """
    from numpyro.infer import HMC, MCMC, NUTS

    potential = lambda z: gaussian_energy(z, (precision, mean))  # noqa: E731
    mcmc = MCMC(
        NUTS(potential_fn=potential) if hmc_steps is None
        else HMC(potential_fn=potential, num_steps=hmc_steps, trajectory_length=None),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=init.shape[0],
        chain_method="vectorized",
        progress_bar=False,
    )  # fmt: skip
    mcmc.run(rng_key, init_params=init)
    return mcmc.get_samples(group_by_chain=True)


def _ess_cells(draws_per_call, means) -> tuple[float, float]:
    """Median over calls of the min bulk ESS (over targets and dimensions), and of the summed
    per-target min ESS; also the largest |mean error|/MCSE seen (a correctness check)."""
    mins, totals, errors = [], [], []
    for draws in draws_per_call:
        draws = np.asarray(draws).reshape(-1, *np.shape(draws)[-3:])  # (target, C, D, dim)
        per_target = [float(samplers.ess_bulk(d).min()) for d in draws]
        mins.append(min(per_target))
        totals.append(sum(per_target))
        errors += [
            float(np.max(np.abs(d.mean(axis=(0, 1)) - np.asarray(m)) / samplers.mcse_mean(d)))
            for d, m in zip(draws, means, strict=True)
        ]
    return statistics.median(mins), statistics.median(totals), max(errors)


def section_nuts_vs_numpyro(args) -> list[str]:
    """NUTS in steady state: samplers.sample(nuts) against NumPyro, one target and batched."""
    from numpyro.infer import MCMC, NUTS

    warmup, draws = (200, 300) if args.quick else (500, 1000)
    num_targets = 8 if args.quick else S4_TARGETS
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    precision, mean = correlated_gaussian(S4_DIM)
    kernel = samplers.nuts(gaussian_energy, num_warmup=warmup)
    kernel_sync = samplers.nuts(gaussian_energy, num_warmup=warmup, asynchronous=False)
    start = jnp.zeros((S4_CHAINS, S4_DIM), DTYPE)
    numpyro_jit = jax.jit(
        lambda key, init, p, m: numpyro_nuts(key, init, p, m, num_warmup=warmup, num_samples=draws)
    )
    mcmc = MCMC(
        NUTS(potential_fn=lambda z: gaussian_energy(z, (precision, mean))),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=S4_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )

    def ours(kernel, start, context, batched=False):
        """A route: ``samplers.sample`` of ``kernel`` from ``start``, a new key per call."""

        def route(seed):
            return samplers.sample(
                jax.random.key(seed), kernel, start, context, 1.0, num_samples=draws,
                batched=batched,
            ).samples  # fmt: skip

        return route

    def numpyro(jitted):
        """A route: one jitted NumPyro run on the single target, a new key per call."""
        return lambda seed: jitted(jax.random.key(seed), start, precision, mean)

    # HMC with a fixed number of leapfrog steps and no jitter: the same algorithm on both sides.
    kernel_hmc = samplers.hmc(
        gaussian_energy, num_warmup=warmup, num_steps=S4_HMC_STEPS, jitter=0.0
    )
    numpyro_hmc_jit = jax.jit(
        lambda key, init, p, m: numpyro_nuts(
            key, init, p, m, num_warmup=warmup, num_samples=draws, hmc_steps=S4_HMC_STEPS
        )
    )

    def numpyro_plain(seed):
        mcmc.run(jax.random.key(seed), init_params=start)
        return mcmc.get_samples(group_by_chain=True)

    print(f"section 4: NUTS, {S4_DIM}-D Gaussian, {warmup} warm-up, {draws} draws", flush=True)
    context = (precision, mean)
    hmc_routes = {
        f"samplers.sample(hmc({S4_HMC_STEPS} steps, jitter 0))": ours(kernel_hmc, start, context),
        f"numpyro MCMC(HMC(num_steps={S4_HMC_STEPS}), vectorized), run inside one jax.jit":
            numpyro(numpyro_hmc_jit),
    }  # fmt: skip
    single = {
        "samplers.sample(nuts)": ours(kernel, start, context),
        "samplers.sample(nuts(asynchronous=False))": ours(kernel_sync, start, context),
        "numpyro MCMC(NUTS, vectorized), run inside one jax.jit": numpyro(numpyro_jit),
        **hmc_routes,
    }
    if not args.quick:  # ~10 s a call, nearly all of it compiling again
        single["numpyro MCMC(NUTS, vectorized), MCMC.run as called (recompiles)"] = numpyro_plain
    outputs: dict[str, list[Any]] = {}
    # The two HMC routes run the same algorithm, so their ESS differ only by chance (about
    # ±10 % per call): each makes S4_HMC_CALLS calls per repetition (0.04 s each), so that the
    # median ESS, and the ratio, rest on many calls.
    timings = interleaved(
        single, reps, calls_per_rep=dict.fromkeys(hmc_routes, S4_HMC_CALLS), outputs=outputs
    )

    # Batched: num_targets Gaussians (own axes, scales × 0.5 … 2, own means) × 8 chains.
    targets = [
        correlated_gaussian(S4_DIM, seed=b + 1, scale=float(c))
        for b, c in enumerate(np.geomspace(0.5, 2.0, num_targets))
    ]
    precisions = jnp.stack([p for p, _ in targets])
    means = jnp.stack([m for _, m in targets])
    start_b = jnp.zeros((num_targets, S4_CHAINS, S4_DIM), DTYPE)

    def numpyro_separate(seed):
        keys = jax.random.split(jax.random.key(seed), num_targets)
        return jnp.stack(
            [numpyro_jit(keys[b], start, precisions[b], means[b]) for b in range(num_targets)]
        )

    batched = {
        f"samplers.sample(nuts, batched=True): {num_targets} targets in one call": ours(
            kernel, start_b, (precisions, means), batched=True
        ),
        f"samplers.sample(nuts(asynchronous=False), batched=True): {num_targets} targets in "
        "one call": ours(kernel_sync, start_b, (precisions, means), batched=True),
        f"numpyro (jit as above): {num_targets} separate runs": numpyro_separate,
    }
    print(f"  batched: {num_targets} targets × {S4_CHAINS} chains", flush=True)
    timings_b = interleaved(batched, reps, outputs=outputs)

    rates: dict[str, tuple[float, float]] = {}  # route: (min ESS / s, Σ targets min ESS / s)

    def rows(timings, means, reference):
        out = []
        for name, t in timings.items():
            ess_min, ess_total, error = _ess_cells(outputs[name], means)
            rates[name] = (ess_min / t.median, ess_total / t.median)
            out.append(
                f"| {name} | {t.first:.3g} | {t.first_compile:.3g} | {t.cell()} | "
                f"{t.steady_compile:.3g} | {ess_min:.0f} | {ess_min / t.median:.0f} | "
                f"{ess_total / t.median:.0f} | {t.median / timings[reference].median:.3g} | "
                f"{error:.2f} |"
            )
        return out

    nuts_ours, _, nuts_numpyro = list(single)[:3]
    hmc_ours, hmc_numpyro = hmc_routes
    batched_ours, _, batched_numpyro = list(batched)
    comparisons = [
        ("NUTS, one target: samplers ÷ NumPyro (min ESS/s)", 0, nuts_ours, nuts_numpyro),
        (f"HMC ({S4_HMC_STEPS} steps), one target: samplers ÷ NumPyro (min ESS/s)", 0,
         hmc_ours, hmc_numpyro),
        (f"NUTS, {num_targets} targets: one batched call ÷ {num_targets} NumPyro runs "
         "(Σ targets min ESS/s)", 1, batched_ours, batched_numpyro),
        (f"NUTS, {num_targets} targets: the same, worst target's min ESS/s", 0, batched_ours,
         batched_numpyro),
    ]  # fmt: skip
    header = (
        "| route | first (s) | of which compiling (s) | steady median (min–max) (s) | "
        "compiling in steady calls (s) | min bulk ESS | min ESS / s | Σ targets min ESS / s "
        "| ÷ samplers | max abs(mean error)/MCSE |"
    )
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    return [
        f"### 4. NUTS in steady state: samplers.sample(nuts) vs NumPyro, {S4_DIM}-D correlated "
        f"Gaussian (scales 0.1 to 3), {S4_CHAINS} chains, {warmup} warm-up, {draws} draws",
        "",
        "NumPyro's `MCMC.run` compiles again on every call (it builds new jitted closures); "
        "the fair steady state traces the whole `MCMC(...).run` once inside an outer "
        "`jax.jit` (new keys and targets of the same shapes reuse it); the plain call is timed "
        "beside it (not in quick runs). ESS columns: medians over all calls (first included) "
        f"of the smallest bulk ESS over dimensions (and targets); {reps} interleaved "
        "repetition(s).",
        "",
        header,
        rule,
        *rows(timings, [mean], "samplers.sample(nuts)"),
        "",
        f"Batched: {num_targets} Gaussians (each its own axes and mean, scales × 0.5 … 2) × "
        f"{S4_CHAINS} chains: one `samplers.sample(..., batched=True)` call against "
        f"{num_targets} NumPyro runs, one per target, of the jitted route above (compiled once "
        "for all of them). 'min bulk ESS' is the worst target's; 'Σ targets' adds each "
        "target's min ESS.",
        "",
        header,
        rule,
        *rows(timings_b, list(means), next(iter(batched))),
        "",
        *_ratio_lines(rates, comparisons),
        "",
    ]


def _ratio_lines(rates, comparisons) -> list[str]:
    """One line per (label, column, route, peer): the route's ESS rate over the peer's."""
    return [
        f"- {label}: **{rates[route][column] / rates[peer][column]:.2f}×**"
        for label, column, route, peer in comparisons
    ]


SECTIONS = {
    1: section_thermal_covariance,
    2: section_block_gibbs,
    3: section_train_epoch,
    4: section_nuts_vs_numpyro,
}


# ------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", type=int, nargs="+", default=[1, 2, 3, 4], choices=sorted(SECTIONS)
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, same sizes")
    parser.add_argument("--reps", type=int, default=None, help="steady repetitions per section")
    parser.add_argument("--temperature", type=float, default=0.5, help="T of section 1")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default all)")
    parser.add_argument(
        "--graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="section 2: also time draw_states on the edge-list SpinNetwork (1M edges, ~25 s a "
        "call today); default on, off with --quick",
    )
    parser.add_argument(
        "--draws",
        nargs="+",
        default=None,
        type=_draws_spec,
        metavar="CxN[+W][,jumps][,f32][,is][,nofb][,raw][,top][,one]",
        help="section 3: also time train with C chains × (W warm-up + N draws), W default 50, "
        "',jumps' for --mode-jumps on, ',f32' for --sampler-dtype float32, ',is' for --sampler "
        "importance, ',nofb' for --pareto-fallback inf, ',raw' for --pareto-smoothing off, "
        "',top' for --target-relative-stderr 0.2, ',one' for --target-relative-stderr inf; "
        "interleaved with the default and T = 0",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="section 3: also time the default train of git revision REV (its files by git "
        "archive, run in a child process with the same threads), interleaved with the rest",
    )
    parser.add_argument("--output", default="benchmarks/results/thermal_speed.md")
    args = parser.parse_args()
    if args.graph is None:
        args.graph = not args.quick
    if jax.config.jax_enable_x64:
        raise SystemExit("run with x64 off: these sections are float32")
    settings = ", ".join(f"{k}={v!r}" for k, v in THREAD_ENV.items())
    print(f"thread settings (set before importing JAX): {settings}", flush=True)
    started = datetime.datetime.now()
    load_start = os.getloadavg()
    body = []
    for number in args.sections:
        body += SECTIONS[number](args)
    load = os.getloadavg()
    pythonpath = os.environ.get("PYTHONPATH")
    command = (f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else "") + shlex.join(
        ["python", sys.argv[0], *sys.argv[1:]]
    )
    quick = " (quick run: fewer repetitions)" if args.quick else ""
    report = [
        f"## Run of {started.isoformat(timespec='minutes')}{quick}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{len(os.sched_getaffinity(0))} used, shared with other jobs (load average "
        f"{load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f} at the start; "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at the end); "
        f"{jax.devices()[0].platform.upper()}, JAX {jax.__version__}, float32 (x64 off). "
        f"Threads: {settings}. Wall time of the run: "
        f"{(datetime.datetime.now() - started).total_seconds():.0f} s.",
        "",
        *body,
    ]
    text = "\n".join(report)
    print(text)
    header = (
        "# Thermal path speed benchmarks\n\n"
        "Produced by `benchmarks/thermal_speed.py`; newest run last.\n\n"
    )
    append_run(args.output, header, text + "\n")


if __name__ == "__main__":
    main()
