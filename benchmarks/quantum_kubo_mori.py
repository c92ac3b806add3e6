"""Time all thermal gradients by Kubo–Mori against one ``eigh`` and ``jax.grad`` through ``eigh``.

For n = 8, 10, 12 qubits (d = 2^n) on the 6-… ring classifier Hamiltonian (4n Pauli strings,
real, random parameters) at T = 0.5, one example, it times, side by side in one run:

* ``eigh``: ``jnp.linalg.eigh`` of the assembled d×d Hamiltonian (the floor);
* ``kubo_mori``: :class:`ThermalEP` (``method="kubo_mori"``), every parameter's gradient,
  from parameters to GradientEstimate (assembly, one ``eigh``, ``C̃ = U†ĈU``, ``M``, traces);
* ``autodiff``: ``jax.grad`` of ``tr(ρ Ĉ)`` with ``ρ`` from ``eigh`` (JAX's eigh JVP).

Each is jit-compiled and warmed up once (excluded), then timed ``--repeats`` times with
``block_until_ready``, the three interleaved; the median is reported.

With ``--stages`` it times instead, interleaved, ``eigh`` and the Kubo–Mori stage after it
(``kubo_mori_traces`` from ``U``, ``log p`` and ``C̃``) both ways: the second product
``M = left U†`` then O(d) per string, or per-mask traces without ``M``
(``factored=True``). Usage::

    PYTHONPATH=. python benchmarks/quantum_kubo_mori.py [--repeats 5] [--qubits 8 10 12]
        [--stages] [--markdown benchmarks/results/quantum.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import thermoeqprop  # noqa: F401  (x64)
from thermoeqprop.quantum import ThermalEP, classifier_network
from thermoeqprop.quantum import _kernels as K


def median_seconds(fns, repeats):
    """Median time of each function; repeats are interleaved so that load drift on a shared
    machine hits every method alike."""
    for fn in fns:
        jax.block_until_ready(fn())  # warm-up: compilation and first run, excluded
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench(n, repeats, temperature=0.5):
    model = classifier_network(n, 2, couplings="ring", init_noise=0.5)
    params = model.init_params(jax.random.key(n))
    x = jnp.array([[0.3, -0.4]])
    y = model.encode_labels(jnp.array([1]))
    h = jax.block_until_ready(model.hamiltonian.matrix(params, x[0]))
    eigh = jax.jit(lambda m: jnp.linalg.eigh(m, symmetrize_input=False))
    est = ThermalEP(model, temperature=temperature)
    z0 = jnp.asarray(model.output_strings[0].phases())

    def loss(p):
        e, u = jnp.linalg.eigh(model.hamiltonian.matrix(p, x[0]))
        w = jnp.exp(K.thermal_log_weights(e, temperature))
        return jnp.sum(w * (jnp.abs(u) ** 2 * z0[:, None]).sum(0)) * -y[0, 0]

    autodiff = jax.jit(jax.grad(loss))
    # The two gradients agree (a check, not a timing).
    reference = autodiff(params)
    diff = jnp.max(jnp.abs(est(params, x, y, None).grad - reference))
    err = float(diff / jnp.max(jnp.abs(reference)))
    t_eigh, t_km, t_ad = median_seconds(
        [lambda: eigh(h), lambda: est(params, x, y, None).grad, lambda: autodiff(params)],
        repeats,
    )
    return {
        "qubits": n,
        "d": 1 << n,
        "params": model.hamiltonian.num_params,
        "eigh": t_eigh,
        "kubo_mori": t_km,
        "autodiff": t_ad,
        "max_rel_diff": err,
    }


def bench_stages(n, repeats, temperature=0.5):
    model = classifier_network(n, 2, couplings="ring", init_noise=0.5)
    params = model.init_params(jax.random.key(n))
    x = jnp.array([[0.3, -0.4]])
    h = jax.block_until_ready(model.hamiltonian.matrix(params, x[0]))
    eigh = jax.jit(lambda m: jnp.linalg.eigh(m, symmetrize_input=False))
    energies, vectors = eigh(h)
    log_p = K.thermal_log_weights(energies, temperature)
    rotated = K.rotate_cost(vectors, model.output_table, -jnp.ones(1))
    table = model.trainable_table
    stage = {
        flag: jax.jit(lambda u, lp, c, f=flag: K.kubo_mori_traces(table, u, lp, c, factored=f))
        for flag in (False, True)
    }
    product, masks = (stage[f](vectors, log_p, rotated)[0] for f in (False, True))
    err = float(jnp.max(jnp.abs(masks - product)) / jnp.max(jnp.abs(product)))
    t_eigh, t_product, t_masks = median_seconds(
        [
            lambda: eigh(h),
            lambda: stage[False](vectors, log_p, rotated),
            lambda: stage[True](vectors, log_p, rotated),
        ],
        repeats,
    )
    masks_count = len({p.x_mask for p in table.strings})
    return (
        f"| {n} | {1 << n} | {masks_count} | {t_eigh:.4f} | {t_product:.4f} | {t_masks:.4f} "
        f"| {(t_eigh + t_product) / t_eigh:.2f} | {(t_eigh + t_masks) / t_eigh:.2f} | {err:.1e} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[8, 10, 12])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", default=None, help="append a results table to this file")
    parser.add_argument("--stages", action="store_true", help="time the Kubo–Mori stage both ways")
    args = parser.parse_args()
    if args.stages:
        header = (
            "| qubits | d | X/Y masks | eigh (s) | KM stage, product (s) | KM stage, masks (s) | "
            "(eigh + product) / eigh | (eigh + masks) / eigh | masks vs product, rel. diff |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
        lines = [bench_stages(n, args.repeats) for n in args.qubits]
        return finish(args, header, lines)
    rows = [bench(n, args.repeats) for n in args.qubits]
    header = (
        "| qubits | d | params | eigh (s) | Kubo–Mori, all gradients (s) | ratio to eigh | "
        "jax.grad through eigh (s) | ratio to eigh | KM vs grad, max rel. diff |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['qubits']} | {r['d']} | {r['params']} | {r['eigh']:.4f} | {r['kubo_mori']:.4f} "
        f"| {r['kubo_mori'] / r['eigh']:.2f} | {r['autodiff']:.4f} "
        f"| {r['autodiff'] / r['eigh']:.2f} | {r['max_rel_diff']:.1e} |"
        for r in rows
    ]
    return finish(args, header, lines)


def finish(args, header, lines):
    meta = (
        f"date {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.platform()}, "
        f"{os.cpu_count()} CPU cores, JAX {jax.__version__}, float64, "
        f"median of {args.repeats} after one warm-up, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load average (1, 5, 15 min) "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    table = header + "\n".join(lines) + "\n\n" + meta + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
