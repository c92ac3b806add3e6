"""Fresh seed sets for tests/false_failure_budget.py, with the tests' code unchanged.

``THERMOEQPROP_TEST_SEED_OFFSET=k`` (an integer; 0 or unset: the seeds written in the tests, as
in CI) adds ``k`` to every integer seed given to ``jax.random.key``, ``jax.random.PRNGKey`` and
``np.random.default_rng`` in the process, tests and library alike, so a statistical module
reruns on other draws. tests/conftest.py applies it to the pytest process, and
tests/cli_testing.py to the ``thermoeqprop`` subprocesses it starts; other subprocesses keep
their written seeds (false_failure_budget.py leaves out the modules that compare with them).
"""

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


def _shifted(seed, by: int):
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
