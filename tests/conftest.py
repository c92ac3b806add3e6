"""Shared test configuration.

Statistical tests in this suite compare Monte Carlo estimates with exact answers using
tolerances of k standard errors (k stated per module together with its false-failure budget).
Seeds are fixed so that a failure is reproducible, never tuned to make a test pass.
"""

import atexit
import ctypes
import ctypes.util
import gc
import os
import shutil
import tempfile

import xla_test_flags

os.environ.setdefault("MPLBACKEND", "Agg")

# One persistent XLA compilation cache for the whole run, empty at its start and removed at its
# end: the pytest-xdist workers, the command-line subprocesses and the notebook kernels inherit
# it from the first process through the environment, so a program that several of them compile
# (the same estimator for a killed run and for its resumption, say) is compiled once. Loading a
# cached executable gives the same bits as compiling it, so no result changes; it cuts the
# suite's time on 2 cores by about a quarter. Tests that count compilations count cache loads
# too (tests/samplers/test_samplers_hmc.py). A cache the user set is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="thermoeqprop-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Programs that compile in over 0.2 s (JAX's default: 1 s). Caching every program ran the
    # command-line tests (test_cli, test_bad_input, test_signals) in 85 s instead of 94 s
    # alone, but the full suite in 1023 s instead of 910 s, with twice the system time (the
    # file lock around each of many more cache reads and writes).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    # A size limit (far above the few tens of MB a run writes) turns on JAX's file lock
    # (the filelock package, a dependency) around every cache read and write; without it a
    # process could read an entry that another is still writing.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))

# XLA's CPU backend at optimisation level 1 (LLVM's lighter pipeline; the default is 2) for
# everything the suite compiles, subprocesses and notebook kernels included. Compilation is most
# of the suite's time (tests/test_thermal.py alone: 122 s from an empty compilation cache, 37 s
# from a full one) and level 1 cut that file to 102 s; the programs compute the same operations,
# without fast-math at either level, so only the rounding of reassociated sums can differ, which
# every tolerance here is far above. Benchmarks and users compile at the default level. Level 0
# (with LLVM's expensive passes off) ran test_control_variates in 93 s against 72 s, its programs
# running slowly, and failed one of its tests (not looked into): not used. A level the user set
# is kept.
#
# With it, XLA's older loop emitters in place of its MLIR fusion emitters: tests/test_thermal.py,
# test_control_variates, test_fallback and test_importance, two workers, ran in 197 s instead of
# 248 s (2026-12-06; their backend compilation alone was 300 of 480 test-seconds). Not for
# users: a default `thermoeqprop train` at optimisation level 2 compiled its first epoch in 46 s
# with them instead of 40 s. A choice the user made is kept (tests/xla_test_flags.py).
os.environ["XLA_FLAGS"] = xla_test_flags.with_flags(os.environ.get("XLA_FLAGS", ""))

# One CPU device per process (thermoeqprop's import would otherwise split the CPU into one per
# core): pytest-xdist already runs a worker on every core, and one device more per worker would
# oversubscribe them. Subprocesses inherit it; tests/test_cpu_devices.py checks the default in
# processes of its own.
os.environ.setdefault("THERMOEQPROP_CPU_DEVICES", "1")
# One BLAS thread per worker for the same reason (numpy's and scipy's OpenBLAS would each start
# a pool per core). It also keeps the quantum sparse solver from switching the pools on XLA's
# callback threads (quantum/_sparse_paths.py, blas_limit), which OpenBLAS does not make safe
# beside a BLAS call in flight. Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
import seed_offset  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Property-based tests (tests/test_cli_properties.py): the same examples in every run
# (derandomized, no example database), no per-example deadline (JAX compiles inside some).
# ``HYPOTHESIS_PROFILE=explore`` draws many more examples, at random, to hunt for new cases.
from hypothesis import settings as _hypothesis  # noqa: E402

_hypothesis.register_profile(
    "thermoeqprop", derandomize=True, database=None, deadline=None, max_examples=25
)
_hypothesis.register_profile("explore", deadline=None, max_examples=400)
_hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "thermoeqprop"))

# Fresh seed sets for tests/false_failure_budget.py (tests/seed_offset.py): nothing changes
# unless THERMOEQPROP_TEST_SEED_OFFSET is set.
try:
    seed_offset.apply_from_environment()
except ValueError as exc:
    raise pytest.UsageError(str(exc)) from None


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most four. Each worker is a
    multithreaded JAX process of its own, and the notebook test starts two kernels besides."""
    return max(1, min(4, os.cpu_count() or 1))


#: The longest test files, longest first (summed test durations on 2 cores, 2026-12-06 evening:
#: the notebooks 78 s with two kernels of their own, test_thermal 146, test_control_variates 95,
#: test_cli 84, then 30–74). ``--dist loadfile`` hands whole files to the workers in queue order,
#: so queueing these first lets the short files fill the end of the run, where otherwise one
#: worker can go on alone with a long file. pytest-xdist reorders its queue by the number of
#: tests per file unless told not to, which put the notebooks (5 tests) near the end:
#: pyproject's addopts pass ``--no-loadscope-reorder``.
LONGEST_FILES = (
    "test_notebooks.py",
    "test_thermal.py",
    "test_control_variates.py",
    "test_cli.py",
    "test_fallback.py",
    "test_importance.py",
    "test_sweep.py",
    "test_sweep_dask.py",
    "test_lowtemp.py",
    "test_mode_jumps.py",
    "samplers/test_samplers_api.py",
    "test_collapsed.py",
    "quantum/test_quantum_shot_distribution.py",
    "test_conditional.py",
    "samplers/test_nuts_async.py",
    "samplers/test_samplers_hmc.py",
    "test_cpu_devices.py",
    "test_coupled.py",
    "test_distributed.py",
)


def pytest_collection_modifyitems(config, items):
    """Collect :data:`LONGEST_FILES` first, in that order; the rest keep theirs (every
    xdist worker sorts alike, so their collections agree)."""
    tests = os.path.dirname(__file__)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}

    def key(item):
        relative = os.path.relpath(str(item.path), tests)
        return rank.get(relative, len(rank))

    items.sort(key=key)  # stable: within a file, and among the rest, the order is unchanged


def _resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere), so that the resident size counts what the process still holds."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: Resident size past which a test module's end frees the worker's compiled programs.
RESIDENT_LIMIT = 3 * 2**30


@pytest.fixture(autouse=True, scope="module")
def _bound_compiled_programs():
    """Forget the compiled programs of the worker when a test module ends above 3 GiB.

    A worker runs many modules (``--dist loadfile``), and every model, shape and static option
    compiles programs of its own that JAX keeps for the life of the process: a worker grew past
    5 GB in a full run, and four of them on a 24 GB machine met the OOM killer. Clearing after
    every module cost time (the next module compiles again what it shares with earlier ones,
    down to single operations, or loads it from the persistent cache above); clearing only past
    3 GiB bounds the memory and leaves most modules alone. The C heap keeps what JAX frees
    unless told to hand it back: without ``malloc_trim`` a worker stayed near 3.8 GB after
    clearing and cleared again after nearly every later module (59 of 66 modules in a full run,
    2026-12-06); with it, 5 of 66, each down to about 1 GB. The files that run late (those not
    in LONGEST_FILES) then took 0.54 of the long files' time in the same run, against 0.62-0.66
    in five earlier runs without it.
    """
    yield
    if _resident_bytes() > RESIDENT_LIMIT:
        _return_freed_memory()
    if _resident_bytes() > RESIDENT_LIMIT:
        jax.clear_caches()
        gc.collect()
        _return_freed_memory()
