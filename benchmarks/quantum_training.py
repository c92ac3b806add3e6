"""Training a published-size quantum network as the experiments do (issue 13, item 5).

Network: ``thermoeqprop.quantum.sensor_network(8)``: 10 qubits, an 8-spin chain (inputs
``x_q Z_q``) read out by a sensor pair, 51 trainable Pauli terms, outputs the projectors on
``|00⟩``, ``|01⟩``, ``|10⟩`` of the pair. Tasks: x uniform in [−1, 1]^8 and a class in
{0, 1, 2} read out as the one-hot probabilities of the three projectors, loss
``½ Σ_j (⟨Π_j⟩ − y_j)²`` (the best constant readout, ``(¼, ½, ¼)``, scores 0.3125):

* ``near`` (default): ``[x_6 > 0] + [x_7 > 0]``, the signs of the fields on the two chain
  qubits coupled to the sensors (the task of ``tests/quantum/test_quantum_experiment.py``);
* ``halves``: ``[x_0 + … + x_3 > 0] + [x_4 + … + x_7 > 0]`` (the rule of
  ``benchmarks/quantum_scale.py``), which needs the whole chain.
 Estimator: ground-state EP with symmetric nudging β = 0.4 to the nudged ground
state (``follow="index"``), 10 shots per Pauli string (Gaussian model), the sparse solver
warm-started from step to step. Adam, fresh batches of 10 every step, through
``thermoeqprop.training.train_steps`` with a results folder per seed (a rerun resumes).

Every ``--eval-every`` steps the held-out loss of ``--test-size`` fixed examples is computed
from the exact outputs (no shots). The report gives, per seed, that loss along the run, the
drop from the initial parameters with its paired standard error over the held-out examples,
and the CPU time; then the mean drop over seeds. The process runs on ``--threads`` cores
(default 1; ``benchmarks/_threads.py``). Usage::

    flock /tmp/thermoeqprop-bench.lock env PYTHONPATH=. python benchmarks/quantum_training.py \\
        [--steps 1000] [--eval-every 100] [--seeds 0 1 2] [--markdown FILE]
"""

from __future__ import annotations

import sys

import _threads

if "--threads" not in sys.argv:
    sys.argv += ["--threads", "1"]
THREAD_ENV = _threads.apply(sys.argv[1:], x64=True)

import argparse  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from thermoeqprop.quantum import EigenstateEP, sensor_network  # noqa: E402
from thermoeqprop.training import StepConfig, held_out, train_steps  # noqa: E402

BETA, SHOTS, BATCH, CHAIN = 0.4, 10, 10, 8
RESULTS_DIR = "results/quantum_training"


def near(rng_key, step, size=BATCH):
    """Fresh examples of the ``near`` task (module docstring), one-hot readout targets."""
    x = jax.random.uniform(rng_key, (size, CHAIN), minval=-1.0, maxval=1.0)
    label = (x[:, -1] > 0).astype(int) + (x[:, -2] > 0).astype(int)
    return x, jax.nn.one_hot(label, 3, dtype=jnp.float64)


def halves(rng_key, step, size=BATCH):
    """Fresh examples of the ``halves`` task (module docstring), one-hot readout targets."""
    x = jax.random.uniform(rng_key, (size, CHAIN), minval=-1.0, maxval=1.0)
    half = CHAIN // 2
    label = (jnp.sum(x[:, :half], 1) > 0).astype(int) + (jnp.sum(x[:, half:], 1) > 0).astype(int)
    return x, jax.nn.one_hot(label, 3, dtype=jnp.float64)


TASKS = {"near": near, "halves": halves}


def example_losses(estimator, params, x, targets):
    outputs = estimator.predict(params, x)
    return np.asarray(jax.vmap(estimator.model.cost)(outputs, targets))


def run_seed(args, estimator, seed, test):
    """Train one seed (or resume its folder); the held-out losses before and after."""
    config = StepConfig(
        steps=args.steps, eval_every=args.eval_every, learning_rate=args.learning_rate, seed=seed
    )
    initial = estimator.model.init_params(jax.random.split(jax.random.key(seed), 4)[0])
    before = example_losses(estimator, initial, *test)
    cpu, tic = time.process_time(), time.perf_counter()

    def line(record):
        print(
            f"seed {seed} step {record['step']:5d}  batch loss {record['train_loss']:.4f}  "
            f"held-out {record['test_loss']:.4f}  ({record['seconds']:.1f} s)",
            flush=True,
        )

    result = train_steps(
        estimator,
        TASKS[args.task],
        config,
        Path(args.results_dir) / f"{args.task}-seed{seed}",
        evaluate=held_out(*test),
        callback=line,
        log=print,
        extra_config={"test_size": args.test_size},
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - tic
    after = example_losses(estimator, result.params, *test)
    return before, after, result.history, cpu, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=list(TASKS), default="near")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--results-dir", default=RESULTS_DIR, help="a folder per seed")
    parser.add_argument("--markdown", default=None, help="write the report to this file")
    parser.add_argument("--threads", type=int, default=1, help="cores (benchmarks/_threads.py)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    model = sensor_network(CHAIN)
    estimator = EigenstateEP(
        model,
        beta=BETA,
        shots=SHOTS,
        shot_model="gaussian",
        solver="sparse",
        follow="index",
        max_nudge_ratio=np.inf,
    )
    test = TASKS[args.task](jax.random.key(2024), 0, args.test_size)
    runs = {seed: run_seed(args, estimator, seed, test) for seed in args.seeds}
    report(args, runs, load_before, os.getloadavg())


def report(args, runs, load_before, load_after):
    every = args.eval_every
    steps = [r["step"] for r in next(iter(runs.values()))[2]]
    head = "| seed | step 0 | " + " | ".join(f"step {s}" for s in steps) + " |"
    rows, drops = [head, "|" + "---|" * (len(steps) + 2)], []
    table = [
        "| seed | held-out loss before | after | drop ± paired SE (z) | CPU s per step | "
        "wall s | refused, crossed (largest per record) |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, (before, after, history, cpu, wall) in runs.items():
        rows.append(
            f"| {seed} | {before.mean():.4f} | "
            + " | ".join(f"{r['test_loss']:.4f}" for r in history)
            + " |"
        )
        diff = before - after
        drop, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
        drops.append(drop)
        refused = max(r.get("diag_num_refused", 0) for r in history)
        crossed = max(r.get("diag_num_crossed", 0) for r in history)
        table.append(
            f"| {seed} | {before.mean():.4f} | {after.mean():.4f} | {drop:.4f} ± "
            f"{se:.4f} ({drop / se:.1f}) | {cpu / args.steps:.3f} | {wall:.0f} | "
            f"{refused:.0f}, {crossed:.0f} |"
        )
    command = (
        f"flock /tmp/thermoeqprop-bench.lock env PYTHONPATH=. python "
        f"benchmarks/quantum_training.py --task {args.task} --steps {args.steps} "
        f"--eval-every {every} "
        f"--learning-rate {args.learning_rate} --seeds {' '.join(map(str, args.seeds))} "
        f"--test-size {args.test_size} --threads {args.threads}"
        + (f" --results-dir {args.results_dir}" if args.results_dir != RESULTS_DIR else "")
        + (f" --markdown {args.markdown}" if args.markdown else "")
    )
    drops = np.asarray(drops)
    spread = f", standard deviation {drops.std(ddof=1):.4f}" if len(drops) > 1 else ""
    lines = [
        f"Command: `{command}`",
        "",
        f"Date {datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.platform()}; "
        f"{os.cpu_count()} CPU cores, this process on {THREAD_ENV['BENCH_THREADS']}; JAX "
        f"{jax.__version__}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}.",
        "",
        f"Held-out loss ({args.test_size} fixed examples, exact outputs) along each run:",
        "",
        *rows,
        "",
        "Before and after; the drop's standard error is that of the mean of the per-example "
        "differences (paired, the same examples); CPU time of this invocation's training and "
        "evaluations (`time.process_time`) over the steps:",
        "",
        *table,
        "",
        f"Mean drop over {len(drops)} seeds: {drops.mean():.4f}{spread}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
