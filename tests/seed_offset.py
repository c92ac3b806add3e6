"""Fresh seed sets for tests/false_failure_budget.py, with the tests' code unchanged.

``THERMOEQPROP_TEST_SEED_OFFSET=k`` (an integer; 0 or unset: the seeds written in the tests, as
in CI) adds ``k`` to every integer seed given to ``jax.random.key``, ``jax.random.PRNGKey`` and
``np.random.default_rng`` in the process, tests and library alike, so a statistical module
reruns on other draws. tests/conftest.py applies it to the pytest process, and
tests/cli_testing.py to the ``thermoeqprop`` subprocesses it starts; other subprocesses keep
their written seeds (false_failure_budget.py leaves out the modules that compare with them).

A false-failure budget is a statement about the Monte Carlo draws of a *fixed* test problem
(the networks, parameters and data a module documents), so the code that builds a problem runs
under :func:`fixed` (a context manager and a decorator): its seeds are never shifted. Shifting
them would test other problems, for which a module's sampler settings were never argued (for
example a random 9-spin network at another seed whose Gibbs chains do not mix at T = 0.05).
"""

import contextlib
import functools
import os

import jax
import numpy as np

VARIABLE = "THERMOEQPROP_TEST_SEED_OFFSET"


def offset() -> int:
    """The offset the environment asks for (0 if unset); ``ValueError`` if not an integer."""
    text = os.environ.get(VARIABLE, "0")
    if not text.strip().lstrip("-").isdigit():
        raise ValueError(f"{VARIABLE} must be an integer, got {text!r}")
    return int(text)


_suspended = 0  # depth of fixed() blocks: seeds are not shifted inside one


@contextlib.contextmanager
def _fixed_block():
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def fixed(function=None):
    """Seeds given inside are the written ones, whatever the offset: ``with fixed(): …``, or
    ``@fixed`` on a function that builds a test problem (a fixture, a helper)."""
    if function is None:
        return _fixed_block()

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _fixed_block():
            return function(*args, **kwargs)

    return wrapper


def _shifted(seed, by: int):
    if _suspended:
        return seed
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return (int(seed) + by) % 2**31
    if isinstance(seed, jax.Array | np.ndarray) and seed.dtype.kind in "iu":
        return seed + by
    return seed  # None, a SeedSequence, a Generator: unchanged


def apply_from_environment() -> None:
    """Shift the seeds of this process by :func:`offset` (nothing at 0)."""
    by = offset()
    if not by:
        return
    key, prng_key, default_rng = jax.random.key, jax.random.PRNGKey, np.random.default_rng
    jax.random.key = lambda seed, *args, **kwargs: key(_shifted(seed, by), *args, **kwargs)
    jax.random.PRNGKey = lambda seed, *a, **kw: prng_key(_shifted(seed, by), *a, **kw)
    np.random.default_rng = lambda seed=None, *args: default_rng(_shifted(seed, by), *args)
