"""Gradient estimators. Every one returns a :class:`~thermoeqprop.GradientEstimate`."""

from thermoeqprop.estimators.backprop import FeedforwardBackprop
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
    "ZeroTemperatureEP",
    "relax",
]
