"""Gradient estimators. Every one returns a :class:`~thermoeqprop.GradientEstimate`."""

from thermoeqprop.estimators.backprop import FeedforwardBackprop
from thermoeqprop.estimators.thermal import (
    GradientSeries,
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
    draw_states,
    parameter_names,
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
    "GradientSeries",
    "ImplicitDifferentiation",
    "Relaxation",
    "RelaxationResult",
    "Sampling",
    "ThermalCovariance",
    "ThermalExact",
    "ThermalNudged",
    "ZeroTemperatureEP",
    "draw_states",
    "parameter_names",
    "relax",
]
