"""Validation of the quantum estimators' settings and inputs, at the public boundary.

Errors name the value given and what would be valid.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._phases import ERROR_SIGNALS, ShotSettings
from thermoeqprop.quantum._shots import SHOT_MODELS


def check_model(model) -> None:
    if not isinstance(model, QuantumNetwork):
        raise ValueError(f"model must be a QuantumNetwork, got {type(model).__name__}")


def check_beta(beta) -> None:
    if not (isinstance(beta, int | float) and np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta (nudging strength) must be a finite number > 0, got {beta!r}")


def check_shots(shots, shot_model="projective", error_signal="noisy") -> None:
    if shots is not None and (
        not isinstance(shots, int | np.integer) or isinstance(shots, bool) or shots < 2
    ):
        raise ValueError(f"shots must be None (exact) or an integer ≥ 2, got {shots!r}")
    if shot_model not in SHOT_MODELS:
        raise ValueError(f"shot_model must be one of {SHOT_MODELS}, got {shot_model!r}")
    if error_signal not in ERROR_SIGNALS:
        raise ValueError(f"error_signal must be one of {ERROR_SIGNALS}, got {error_signal!r}")
    if shots is None and (shot_model, error_signal) != ("projective", "noisy"):
        raise ValueError(
            f"shot_model={shot_model!r} and error_signal={error_signal!r} describe finite "
            f"shots, but shots=None (exact expectations): give shots=N, or leave them at "
            f"'projective' and 'noisy'"
        )


def check_batch(model: QuantumNetwork, params, x, targets=None) -> None:
    p_shape = jnp.shape(params)
    if p_shape != (model.hamiltonian.num_params,):
        raise ValueError(
            f"params must have shape ({model.hamiltonian.num_params},) (one entry per "
            f"trainable parameter), got {p_shape}"
        )
    x_shape = jnp.shape(x)
    if len(x_shape) != 2 or x_shape[1] != model.num_inputs:
        raise ValueError(f"x must have shape (batch, {model.num_inputs}), got {x_shape}")
    if targets is not None:
        t_shape = jnp.shape(targets)
        if t_shape != (x_shape[0], model.num_outputs):
            raise ValueError(
                f"targets must have shape ({x_shape[0]}, {model.num_outputs}), got {t_shape}"
            )


def static_shots(est) -> ShotSettings:
    shots = None if est.shots is None else int(est.shots)
    return ShotSettings(shots, est.shot_model, est.error_signal)
