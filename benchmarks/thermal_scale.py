"""Thermal EP at a scale the edge-list code could not reach: a 2,000-hidden-spin network on digits.

Trains ``SpinNetwork.layered((64, HIDDEN, 10))`` on scikit-learn's digits by the unclamped
covariance estimator (block Gibbs through ``samplers.layered_gibbs``), float32 (the throughput
mode, ``THERMOEQPROP_X64=0``, set below before the package is imported), on the machine's
cores, and appends to ``benchmarks/results/thermal_scale.md`` the command, the test accuracy
and the gradient's relative MCSE per epoch, and the time per epoch (synchronised, from the
training loop). The number of epochs is chosen to fit ``--budget-minutes`` from the time of
one estimate measured after compilation.

    python benchmarks/thermal_scale.py [--hidden 2000] [--temperature 1.0] [--budget-minutes 13]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("THERMOEQPROP_X64", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from thermoeqprop.data import load_dataset  # noqa: E402
from thermoeqprop.estimators import Sampling, ThermalCovariance  # noqa: E402
from thermoeqprop.models import SpinNetwork  # noqa: E402
from thermoeqprop.training import TrainConfig, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=1.0)
    # Adam moves every coupling by about the learning rate per step; with 2,000 hidden spins
    # feeding each output, 0.01 saturated every output at −1 in the first epoch (the run of
    # 2026-12-01T23:52 in the results file): the rate must shrink like 1/fan-in.
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--budget-minutes", type=float, default=13.0)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--output", default="benchmarks/results/thermal_scale.md")
    args = parser.parse_args()

    data = load_dataset("digits")
    net = SpinNetwork.layered((64, args.hidden, 10))
    sampling = Sampling(method="gibbs", num_chains=4, num_samples=50, num_warmup=20)
    estimator = ThermalCovariance(net, args.temperature, sampling)
    params = net.init_params(jax.random.key(0))
    x, y = data.x_train[:32], net.encode_labels(data.labels_train[:32])
    start = time.perf_counter()
    jax.block_until_ready(estimator(params, x, y, jax.random.key(0)).grad)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(estimator(params, x, y, jax.random.key(1)).grad)
    batch_seconds = time.perf_counter() - start
    batches = len(data.labels_train) // 32
    # Budget: training epochs plus one evaluation of the test set per epoch (about as many
    # sampled examples as 11 batches), with a margin.
    per_epoch = 1.3 * batch_seconds * (batches + 12)
    epochs = int(max(1, min(args.max_epochs, args.budget_minutes * 60 // per_epoch)))
    print(f"one estimate {batch_seconds:.2f} s (first {compile_seconds:.1f} s): {epochs} epochs")

    config = TrainConfig(epochs=epochs, batch_size=32, learning_rate=args.learning_rate, seed=0)
    start = time.perf_counter()
    result = train(
        estimator, data, config, params=params, progress=False,
        callback=lambda r: print(f"epoch {r['epoch']}: {r['test_accuracy']:.4f}, "
                                 f"{r['epoch_seconds']:.1f} s", flush=True),
    )  # fmt: skip
    wall = time.perf_counter() - start
    history = result.history
    lines = [
        "",
        f"## Run of {datetime.datetime.now().isoformat(timespec='minutes')}",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores, JAX {jax.__version__}, float32 "
        f"(THERMOEQPROP_X64=0). SpinNetwork.layered((64, {args.hidden}, 10)): "
        f"{net.num_spins} spins, {sum(np.size(p) for p in jax.tree_util.tree_leaves(params))} "
        f"parameters; covariance estimator at T = {args.temperature}, layered block Gibbs, "
        "4 chains × (20 warm-up + 50 draws) per example, batch 32, Adam "
        f"{args.learning_rate} cosine, seed 0. One estimate of a batch: {batch_seconds:.2f} s "
        f"(the first, compiling: {compile_seconds:.1f} s). Whole training: {wall / 60:.1f} min.",
        "",
        "| epoch | test accuracy | train loss | rel. MCSE of the gradient | s / epoch |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r['epoch']} | {100 * r['test_accuracy']:.2f} % | {r['train_loss']:.4f} | "
            f"{r.get('relative_stderr', float('nan')):.3f} | {r['epoch_seconds']:.1f} |"
            for r in history
        ),
        "",
    ]
    exists = os.path.exists(args.output)
    with open(args.output, "a") as handle:
        if not exists:
            handle.write(
                "# Thermal EP at scale\n\nProduced by `benchmarks/thermal_scale.py`; newest run "
                "last.\n"
            )
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
