"""One listener that counts compilations for the tests that check a call is not recompiled.

``COMPILES["active"] = True`` around a call records, in ``COMPILES["events"]``, every XLA
compilation and every request to the persistent compilation cache (the suite runs with one,
tests/conftest.py): a recompilation whose executable the cache holds records no backend
compile, but it does record its request. Registered once per process, on first import.
"""

import jax

COMPILES = {"active": False, "events": []}


def _count_compile(name, *_, **__):
    if COMPILES["active"] and (
        "backend_compile" in name or name == "/jax/compilation_cache/compile_requests_use_cache"
    ):
        COMPILES["events"].append(name)


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_compile)
