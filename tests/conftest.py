"""Shared test configuration.

Statistical tests in this suite compare Monte Carlo estimates with exact answers using
tolerances of k standard errors (k stated per module together with its false-failure budget).
Seeds are fixed so that a failure is reproducible, never tuned to make a test pass.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
