"""Shared, expensive runs of the samplers tests (compiled and sampled once per session)."""

import pytest
from samplers_testing import batched_gaussian_nuts


@pytest.fixture(scope="session")
def nuts_gaussian():
    """The session's one run of :func:`samplers_testing.batched_gaussian_nuts`."""
    return batched_gaussian_nuts()
