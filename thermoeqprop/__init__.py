"""thermoeqprop: equilibrium propagation at zero and finite temperature, classical and quantum.

Importing the package turns on JAX's 64-bit mode (as NetKet does): exact references and
quantum computations need float64, and mixing precisions silently is worse than the cost.
Set ``THERMOEQPROP_X64=0`` before import to keep JAX's float32 default for throughput.
"""

import os

import jax

if os.environ.get("THERMOEQPROP_X64", "1") != "0":
    jax.config.update("jax_enable_x64", True)

from thermoeqprop._result import GradientEstimate  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GradientEstimate", "__version__"]
