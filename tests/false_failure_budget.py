"""The false-failure budgets of the statistical test modules, measured (not part of CI).

Every statistical module states, in its docstring and as ``FALSE_FAILURE_BUDGET``, the
probability that one run fails by chance although the code is right. This script reruns each
module on fresh seed sets (``THERMOEQPROP_TEST_SEED_OFFSET``, tests/seed_offset.py: run ``k``
adds ``k × 1,000,003`` to every seed of the process, so seed sets never overlap), counts the
runs that fail, and writes the table of tests/README.md ("False-failure budgets, measured"):
failures/runs with a 95 % Clopper–Pearson interval beside the stated budget. Each record
(module, offset, outcome, failing tests, seconds, load average, commit) is appended to ``--log``
(by default ``tests/false_failure_budget.jsonl``, kept in the repository) as it finishes, so an
interrupted measurement keeps what it ran and a later one skips the (module, seed set) pairs
already counted; the table is built from the whole log, the latest record of each pair.

The offset moves the Monte Carlo draws only: code that builds a test problem (networks,
parameters, data, target distributions) runs under ``seed_offset.fixed`` and keeps its written
seeds, because a budget is a statement about the draws of the problem a module documents.

Each run is ``pytest -n 0 -p no:cacheprovider MODULE`` in a process of its own, under
``--timeout`` seconds, holding ``/tmp/thermoeqprop-bench.lock`` (flock) so that it never
overlaps a benchmark; the runs share one XLA compilation cache (``--cache-dir``), which gives
the same bits as compiling. A run that times out or errors is recorded as such and is not
counted as a run of the module.

Usage (from the repository root)::

    python tests/false_failure_budget.py --runs 20                  # every module
    python tests/false_failure_budget.py --modules tests/test_health.py --runs 20
    python tests/false_failure_budget.py --table-only               # rewrite the table
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "tests" / "README.md"
LOCK = "/tmp/thermoeqprop-bench.lock"
#: Seed offset of run ``k`` (1, 2, …): ``k × STRIDE``, far apart from the small seeds the tests
#: write, so no two runs (and no run and CI, offset 0) share a seed.
STRIDE = 1_000_003
START, END = "<!-- false-failure-budget:start -->", "<!-- false-failure-budget:end -->"
#: Modules whose sampled checks run in subprocesses the tests start, which keep their written
#: seeds: rerunning them measures nothing, so they are left out unless named.
UNSHIFTED = {
    "tests/test_cpu_devices.py": "its estimate runs in a subprocess of its own",
    "tests/samplers/test_samplers_devices.py": "its 4-device draws come from a subprocess of "
    "its own, compared with references built here",
}


def stated_budgets() -> dict[str, float]:
    """``FALSE_FAILURE_BUDGET`` of every test module that states one (read, not imported)."""
    budgets = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
                "FALSE_FAILURE_BUDGET"
            ]:
                budgets[str(path.relative_to(ROOT))] = float(ast.literal_eval(node.value))
    return budgets


def run_once(module: str, run: int, timeout: float, cache_dir: str, lock_path: str = LOCK) -> dict:
    """One run of ``module`` on seed set ``run``: its record for the log."""
    offset = run * STRIDE
    env = dict(
        os.environ,
        THERMOEQPROP_TEST_SEED_OFFSET=str(offset),
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    command = [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q",
               "-rf", "--durations=0", f"--timeout={int(timeout)}", module]  # fmt: skip
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_before, start = os.getloadavg()[0], time.time()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout + 60)  # fmt: skip
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            code, output = None, str(exc.stdout or "")
        seconds, load_after = time.time() - start, os.getloadavg()[0]
    outcome = {0: "pass", 1: "fail"}.get(code, "error")
    if "Timeout" in output and outcome == "fail":
        outcome = "error"  # pytest-timeout stopped a test: not a statistical failure
    failed = sorted(set(re.findall(r"^FAILED (\S+)", output, re.M)))
    return {"module": module, "run": run, "offset": offset, "outcome": outcome,
            "exit_code": code, "failed": failed, "seconds": round(seconds, 1),
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "errors": _error_lines(output) if outcome != "pass" else [],
            "tail": output[-2000:] if outcome != "pass" else ""}  # fmt: skip


def _error_lines(output: str, limit: int = 40) -> list[str]:
    """The assertion lines of a failed run (pytest's ``E   …`` lines), the values in them."""
    return [line for line in output.splitlines() if line.startswith("E ")][:limit]


def _commit() -> str:
    """The checked-out commit of the tests and code being measured ("" outside git)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def read_log(path: Path) -> list[dict]:
    """The records of a log (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest(records: list[dict]) -> list[dict]:
    """The last record of each (module, seed set): a rerun replaces an earlier run."""
    return list({(r["module"], r["run"]): r for r in records}.values())


def clopper_pearson(failures: int, runs: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided interval of a binomial rate."""
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if failures == 0 else float(beta.ppf(alpha / 2, failures, runs - failures + 1))
    high = (
        1.0 if failures == runs else float(beta.ppf(1 - alpha / 2, failures + 1, runs - failures))
    )
    return low, high


def table(records: list[dict], budgets: dict[str, float]) -> str:
    """The README section from the log's records."""
    records = latest(records)
    lines = [
        "| module | stated budget | failures / runs | rate | 95 % interval | errors | "
        "s per run (median) | load average (1 min) | failing tests | commits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for module in sorted({r["module"] for r in records} - set(UNSHIFTED)):
        mine = [r for r in records if r["module"] == module]
        counted = [r for r in mine if r["outcome"] in ("pass", "fail")]
        failures = sum(r["outcome"] == "fail" for r in counted)
        errors = len(mine) - len(counted)
        seconds = sorted(r["seconds"] for r in counted) or [float("nan")]
        loads = [x for r in mine for x in r["load_average"]]
        tests = sorted({t.split("::", 1)[-1] for r in counted for t in r["failed"]})
        if counted:
            low, high = clopper_pearson(failures, len(counted))
            rate, interval = f"{failures / len(counted):.3f}", f"[{low:.3f}, {high:.3f}]"
        else:
            rate = interval = "–"
        lines.append(
            f"| `{module.removeprefix('tests/')}` | {budgets.get(module, float('nan')):.2g} | "
            f"{failures} / {len(counted)} | {rate} | {interval} | {errors} | "
            f"{seconds[len(seconds) // 2]:.0f} | {min(loads):.1f}–{max(loads):.1f} | "
            f"{', '.join(f'`{t}`' for t in tests) or '–'} | "
            f"{', '.join(sorted({r['commit'] for r in counted})) or '–'} |"
        )
    runs = sorted({r["run"] for r in records})
    dates = sorted(r["date"] for r in records)
    lines += [
        "",
        f"Seed sets {runs[0]}–{runs[-1]} (offset = run × {STRIDE:,}; the runs of each module "
        "are counted in the table),"
        f" measured {dates[0]} to {dates[-1]}, each run a `pytest -n 0` process of its own "
        "(at most one per `--lock`) on a machine shared with other jobs (load average before "
        "and after each run in the table); the "
        "problems keep their written seeds (`seed_offset.fixed`), the draws move. A "
        "timed-out or erroring run is listed under errors and not counted. Not measured (their "
        "subprocesses keep the written seeds): "
        + "; ".join(f"`{m.removeprefix('tests/')}` ({why})" for m, why in UNSHIFTED.items())
        + ".",
    ]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    text = README.read_text()
    block = f"{START}\n{section}\n{END}"
    if START in text:
        head, _, rest = text.partition(START)
        text = head + block + rest.partition(END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    every = "every module stating FALSE_FAILURE_BUDGET, less those seeded in subprocesses"
    parser.add_argument("--modules", nargs="+", help=f"test modules (default: {every})")
    parser.add_argument("--runs", type=int, default=20, help="seed sets per module")
    parser.add_argument("--first-run", type=int, default=1, help="first seed set (≥ 1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--log", default=str(ROOT / "tests" / "false_failure_budget.jsonl"))
    parser.add_argument("--cache-dir", default="/tmp/thermoeqprop-false-failures-xla-cache")
    parser.add_argument("--lock", default=LOCK, help="file locked during each run (default: "
                        "the benchmarks' lock, so that no run overlaps a benchmark)")  # fmt: skip
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table")
    parser.add_argument("--no-readme", action="store_true", help="leave tests/README.md alone")
    args = parser.parse_args(argv)
    if args.first_run < 1:
        parser.error(f"--first-run must be ≥ 1 (0 is CI's seed set), got {args.first_run}")
    budgets = stated_budgets()
    modules = args.modules or [m for m in budgets if m not in UNSHIFTED]
    unknown = [m for m in modules if m not in budgets]
    if unknown:
        parser.error(f"{unknown} state no FALSE_FAILURE_BUDGET; modules that do: {list(budgets)}")
    log = Path(args.log)
    records = read_log(log)
    done = {(r["module"], r["run"]) for r in records if r["outcome"] in ("pass", "fail")}
    if not args.table_only:
        for run in range(args.first_run, args.first_run + args.runs):
            for module in modules:  # interleaved: a change of load spreads over the modules
                if (module, run) in done:
                    continue
                record = run_once(module, run, args.timeout, args.cache_dir, args.lock)
                with log.open("a") as file:
                    file.write(json.dumps(record) + "\n")
                print(f"{module} run {run}: {record['outcome']} in {record['seconds']} s "
                      f"{record['failed'] or ''}", flush=True)  # fmt: skip
    section = table(read_log(log), budgets)
    print(section)
    if not args.no_readme:
        write_readme(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
