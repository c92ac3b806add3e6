"""Gradient estimators. Every one returns a :class:`~thermoeqprop.GradientEstimate`."""

from thermoeqprop.estimators.backprop import FeedforwardBackprop
from thermoeqprop.estimators.thermal import (
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
    draw_states,
)
from thermoeqprop.estimators.zero_temperature import (
    ImplicitDifferentiation,
    Relaxation,
    RelaxationResult,
    ZeroTemperatureEP,
    relax,
)

__all__ = [
    "FeedforwardBackprop",
    "ImplicitDifferentiation",
    "Relaxation",
    "RelaxationResult",
    "Sampling",
    "ThermalCovariance",
    "ThermalExact",
    "ThermalNudged",
    "ZeroTemperatureEP",
    "draw_states",
    "relax",
]
