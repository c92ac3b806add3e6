"""Section ``collapsed-spins`` of ``benchmarks/variance_reduction.py``: what sampling one
parity class of a layered spin network from its exact marginal would gain (issue 11, item 3's
9-spin network), predicted exactly before anything is built.

In a layered spin network the layers of one parity class are independent given the other
class, so summing one class out is exact: the other class ``c`` has the marginal law

    p(s_c) ∝ exp(Σ_{k ∈ c} f_k·s_k / T) · Π_{i ∉ c} 2 cosh(u_i(s_c) / T),

``u_i`` the field of an unsampled spin (linear in ``s_c``). A chain on ``s_c`` alone (heat-bath
updates of its spins one at a time on this marginal, in a fixed order) with the estimators'
conditional expectations given ``s_c`` is a sampler of the same law that never draws the other
class. The package's Rao–Blackwellised estimators use the same conditional expectations but
draw them along the block-Gibbs chain of the whole network, whose slow modes they keep
(`results/variance_reduction.md`, run of 2026-12-04T21:39).

Two measurements:

1. **Exact asymptotic variances** (``_vr_exact``) of the covariance series' mean, summed over
   parameters and examples, by enumeration of all states: the plain series along the block-
   Gibbs sweep of the layers (the package's sampler), the conditional expectations given each
   class along that same chain, and the same conditional expectations along the collapsed
   chain of that class (one sweep = every spin of the class once), with "site averages" on
   top (each draw replaced by the mean over the class's spins j of ``E[· | s_{−j}]``, the
   heat-bath law of spin j given the others: a variant of the estimator tried on 2026-12-05
   and not kept, since its ``1 + |K|`` evaluations per draw cost more than it gained), with
   the heat-bath control variates (``control_variates="heat_bath"``: the sweep's innovations
   ``s_j − E[s_j | s_{−j}]`` with their regression coefficients; :func:`heat_bath_variance`),
   and for independent draws of it. Ratios are plain over variant, at equal sweeps.
2. **Cost of a sweep**: minimal jitted loops (``lax.scan`` over sweeps, all examples × chains
   vectorised, states of the sampled spins recorded every sweep) of the block-Gibbs sweep and
   of the collapsed sweep of the smaller class, interleaved, steady medians. The estimators'
   statistics are not in either loop (their cost is in the run of 2026-12-04T21:39: the
   conditional expectations made a call 1.6× a plain one at equal sweeps).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _vr_exact import block_kernels, chain_variance, conditional, example_terms, groups

import samplers
from thermoeqprop.estimators._rao_blackwell import independent_classes
from thermoeqprop.models import SpinNetwork

SHAPES = (
    ((3, 4, 3, 2), 0.5),
    ((3, 4, 3, 2), 0.25),
    ((3, 4, 3, 2), 1.0),
    ((3, 6, 3), 0.5),
    ((3, 8, 2), 0.5),
    ((3, 4, 2, 2, 2), 0.5),
)
CHAINS, SWEEPS = 4, 4200  # section spin's sampling: 4 chains × (200 + 4000) per example


def problem(sizes, num_examples=4):
    """The benchmark's parameter recipe (section ``spin``) for a layered shape."""
    net = SpinNetwork.layered(sizes)
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (num_examples, sizes[0]))
    targets = net.encode_labels(jnp.array([0, 1, 1, 0][:num_examples]) % net.num_classes)
    return net, params, x, targets


def _site_kernels(num_spins: int, pi_c: np.ndarray) -> list[np.ndarray]:
    """Heat-bath updates of each spin of a class, on its ``2ᵏ`` configurations (label bit j =
    spin j up) under the marginal ``pi_c``, as transition matrices."""
    labels = np.arange(2**num_spins)
    kernels = []
    for j in range(num_spins):
        down, up = labels & ~(1 << j), labels | (1 << j)
        kernel = np.zeros((labels.size, labels.size))
        total = pi_c[down] + pi_c[up]
        kernel[labels, down] += pi_c[down] / total
        kernel[labels, up] += pi_c[up] / total
        kernels.append(kernel)
    return kernels


def collapsed_variances(net, params, x, targets, temperature) -> dict[str, float]:
    """Σ over parameters and examples of the asymptotic variance (× N) of the covariance
    series' mean under each route (module docstring, measurement 1)."""
    n = net.num_spins
    states = np.asarray(samplers.spin_states(jnp.arange(2**n), n, dtype=float))
    classes = independent_classes(net)
    out: dict[str, float] = {}

    def add(name, value):
        out[name] = out.get(name, 0.0) + float(np.sum(value))

    for x_b, y_b in zip(np.asarray(x), np.asarray(targets), strict=True):
        pi, cost, grads = example_terms(net, params, states, x_b, y_b, temperature)
        f = (cost - pi @ cost)[:, None] * (grads - pi @ grads)
        kernels = block_kernels(states, pi, net.blocks)
        add("plain, block Gibbs", chain_variance({len(kernels): f}, kernels, pi))
        add("plain, independent draws", pi @ (f - pi @ f) ** 2)
        for k, c in enumerate(classes):
            labels = groups(states, c)
            given = conditional(f, pi, labels)
            add(f"given class {k}, block Gibbs", chain_variance({len(kernels): given}, kernels, pi))
            pi_c = np.bincount(labels, pi, minlength=2 ** len(c))
            g = np.zeros((pi_c.size, f.shape[1]))
            g[labels] = given  # E[f | s_c] on the class's own configurations
            g -= pi_c @ g
            site = _site_kernels(len(c), pi_c)
            add(f"given class {k}, collapsed chain", chain_variance({len(site): g}, site, pi_c))
            add(f"given class {k}, independent draws", pi_c @ (g * g))
            # Site averages: mean over the class's spins j of E[g | s_{−j}] (the heat-bath
            # update of spin j applied to g).
            averaged = sum(kernel @ g for kernel in site) / len(site)
            add(
                f"given class {k}, site averages", chain_variance({len(site): averaged}, site, pi_c)
            )
            add(f"given class {k}, heat-bath controls", heat_bath_variance(g, site, pi_c))
    return out


def heat_bath_variance(g, site, pi_c) -> np.ndarray:
    """Asymptotic variance (× N) of the mean of ``g`` along the collapsed chain minus its
    heat-bath controls: each update's innovation ``d_j = s_j − E[s_j | s_{−j}]`` (a function of
    the state right after update ``j``), times the regression coefficient of the sweep's final
    ``g`` on it, ``Cov(d_j, g) / Var(d_j)`` (the innovations of one sweep are uncorrelated),
    which is what ``control_variates="heat_bath"`` fits."""
    size = len(pi_c)
    labels = np.arange(size)
    functions = {len(site): g}
    for j, kernel in enumerate(site):
        spin = np.where(labels >> j & 1, 1.0, -1.0)
        innovation = spin - kernel @ spin
        later = np.eye(size)
        for following in site[j + 1 :]:
            later = later @ following
        coefficient = ((pi_c * innovation) @ (later @ g)) / (pi_c @ innovation**2)
        functions[j + 1] = functions.get(j + 1, 0.0) - innovation[:, None] * coefficient[None, :]
    return chain_variance(functions, site, pi_c)


# ------------------------------------------------------------------------------------------
# Cost of a sweep: minimal loops.


def _layers(net):
    bounds = np.cumsum((0, *net.ising_layer_sizes))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _heat(key, field, temperature):
    return jnp.where(
        jax.random.uniform(key, field.shape) < jax.nn.sigmoid(2 * field / temperature), 1.0, -1.0
    )


def block_gibbs_loop(net, temperature):
    """``run(keys (B, C), fields (B, n), couplings, starts (B, C, n)) -> (B, C, sweeps, n)``:
    heat-bath sweeps over the layers in order, every state recorded."""
    layers = _layers(net)

    def chain(key, fields, couplings, start):
        def sweep(s, key):
            keys = jax.random.split(key, len(layers))
            for k, layer in enumerate(layers):
                u = fields[layer]
                if k > 0:
                    u = u + s[layers[k - 1]] @ couplings[k - 1]
                if k < len(layers) - 1:
                    u = u + couplings[k] @ s[layers[k + 1]]
                s = s.at[layer].set(_heat(keys[k], u, temperature))
            return s, s

        return jax.lax.scan(sweep, start, jax.random.split(key, SWEEPS))[1]

    return jax.jit(jax.vmap(jax.vmap(chain, (0, None, None, 0)), (0, 0, None, 0)))


def collapsed_loop(net, temperature, kept: tuple[int, ...]):
    """The same for the chain on the layers ``kept`` (one parity class) alone, the others
    summed out: heat-bath updates of the kept spins one at a time on their marginal, the
    fields ``u`` of the summed layers carried and updated; records the kept spins."""
    layers = _layers(net)
    summed = [k for k in range(len(layers)) if k not in kept]

    def log_cosh(z):
        return jnp.logaddexp(z, -z)

    def chain(key, fields, couplings, start):
        def summed_fields(s):
            u = {}
            for k in summed:
                v = fields[layers[k]]
                if k > 0:
                    v = v + s[layers[k - 1]] @ couplings[k - 1]
                if k < len(layers) - 1:
                    v = v + couplings[k] @ s[layers[k + 1]]
                u[k] = v
            return u

        def sweep(carry, key):
            s, u = carry
            uniforms = jax.random.uniform(key, (sum(net.ising_layer_sizes[k] for k in kept),))
            n_done = 0
            for k in kept:
                for i in range(net.ising_layer_sizes[k]):
                    index = layers[k].start + i
                    weights = {}
                    if k > 0:
                        weights[k - 1] = couplings[k - 1][:, i]
                    if k < len(layers) - 1:
                        weights[k + 1] = couplings[k][i, :]
                    logit = 2 * fields[index] / temperature
                    rest = {}
                    for neighbour, w in weights.items():
                        rest[neighbour] = u[neighbour] - w * s[index]
                        logit += jnp.sum(
                            log_cosh((rest[neighbour] + w) / temperature)
                            - log_cosh((rest[neighbour] - w) / temperature)
                        )
                    spin = jnp.where(uniforms[n_done] < jax.nn.sigmoid(logit), 1.0, -1.0)
                    s = s.at[index].set(spin)
                    u = {**u, **{nb: rest[nb] + w * spin for nb, w in weights.items()}}
                    n_done += 1
            kept_spins = jnp.concatenate([s[layers[k]] for k in kept])
            return (s, u), kept_spins

        return jax.lax.scan(sweep, (start, summed_fields(start)), jax.random.split(key, SWEEPS))[1]

    return jax.jit(jax.vmap(jax.vmap(chain, (0, None, None, 0)), (0, 0, None, 0)))


def sweep_costs(net, params, x, targets, temperature, reps: int) -> dict[str, float]:
    """Steady median seconds of one call of each loop (all examples × chains × sweeps)."""
    classes = independent_classes(net)
    layer_of = {i: k for k, s in enumerate(_layers(net)) for i in range(s.start, s.stop)}
    small = min(classes, key=len)
    kept = tuple(sorted({layer_of[i] for i in small}))
    fields, couplings = [], None
    for x_b, y_b in zip(x, targets, strict=True):
        couplings, f = net.ising_form(params, x_b, y_b, 0.0)
        fields.append(f)
    fields = jnp.stack(fields)
    keys = jax.random.split(jax.random.key(3), (x.shape[0], CHAINS))
    starts = jnp.where(
        jax.random.bernoulli(jax.random.key(4), 0.5, (x.shape[0], CHAINS, net.num_spins)), 1.0, -1.0
    )
    routes = {
        "block Gibbs (layers in turn)": block_gibbs_loop(net, temperature),
        f"collapsed on spins {list(small)}": collapsed_loop(net, temperature, kept),
    }
    for run in routes.values():
        jax.block_until_ready(run(keys, fields, couplings, starts))  # compile
    seconds = {name: [] for name in routes}
    for _ in range(reps):
        for name, run in routes.items():
            start = time.perf_counter()
            jax.block_until_ready(run(keys, fields, couplings, starts))
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def section_collapsed_spins(args) -> list[str]:
    lines = [
        "### Section collapsed-spins: one class sampled from its exact marginal (predicted)",
        "",
        "Exact asymptotic variances of the covariance series' mean (Σ over parameters and the "
        "4 examples of each shape; section spin's parameter recipe), ratio plain block Gibbs "
        "over each route at equal sweeps (a collapsed sweep updates every spin of its class "
        "once, a block-Gibbs sweep every layer once). 'given class k' = the estimators' "
        "conditional expectations given that class.",
        "",
        "| layers | T | classes (spins) | plain, independent draws | given class 0: block "
        "Gibbs | collapsed chain | + site averages | + heat-bath controls | independent | "
        "given class 1: block Gibbs | collapsed chain | + site averages | + heat-bath controls "
        "| independent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sizes, temperature in SHAPES:
        net, params, x, targets = problem(sizes)
        v = collapsed_variances(net, params, x, targets, temperature)
        base = v["plain, block Gibbs"]
        cells = [base / v["plain, independent draws"]]
        for k in range(2):
            cells += [
                base / v[f"given class {k}, {route}"]
                for route in (
                    "block Gibbs",
                    "collapsed chain",
                    "site averages",
                    "heat-bath controls",
                    "independent draws",
                )
            ]
        sizes_text = " / ".join(str(len(c)) for c in independent_classes(net))
        lines.append(
            f"| {sizes} | {temperature:g} | {sizes_text} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + " |"
        )
        print(f"  collapsed-spins: {sizes} at T = {temperature:g} done", flush=True)
    net, params, x, targets = problem(SHAPES[0][0])
    costs = sweep_costs(net, params, x, targets, SHAPES[0][1], args.reps)
    plain = costs["block Gibbs (layers in turn)"]
    lines += [
        "",
        f"Cost of a sweep, {SHAPES[0][0]} at T = {SHAPES[0][1]:g}: minimal jitted loops, 4 "
        f"examples × {CHAINS} chains × {SWEEPS} sweeps, every sweep's sampled spins recorded, "
        f"{args.reps} interleaved repetitions, steady medians:",
        "",
        "| loop | s / call | ÷ block Gibbs |",
        "| --- | --- | --- |",
        *(f"| {name} | {s:.4f} | {s / plain:.2f} |" for name, s in costs.items()),
        "",
    ]
    return lines
