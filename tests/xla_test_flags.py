"""The XLA flags the suite compiles with (tests/conftest.py sets them for every process it
starts; a subprocess that replaces ``XLA_FLAGS`` adds them to its own with :func:`with_flags`).

Compilation is most of the suite's time, so both trade the speed of the compiled programs for
the speed of compiling them; neither changes what a program computes beyond the rounding of
reassociated sums (no fast-math), which every tolerance here is far above.
"""

#: Optimisation level 1 (LLVM's lighter pipeline; the default is 2) and XLA's loop emitters
#: instead of its MLIR fusion emitters (measurements: tests/conftest.py).
COMPILE_FLAGS = ("--xla_backend_optimization_level=1", "--xla_cpu_use_fusion_emitters=false")


def with_flags(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with each of :data:`COMPILE_FLAGS` it does not set."""
    added = [flag for flag in COMPILE_FLAGS if flag.split("=")[0] not in flags]
    return " ".join([flags, *added]).strip()
