"""samplers: JAX samplers for Gibbs distributions ``p(s) ∝ exp(−E(s)/T)`` of any energy.

Knows nothing of equilibrium propagation: an energy function and a start state in, samples
of shape (chain, draw, ...) and per-step diagnostics out.
"""

__all__: list[str] = []
