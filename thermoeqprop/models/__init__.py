"""Energy models: layered continuous, quadratic (Gaussian), and spin networks; costs."""

from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.costs import COSTS, CrossEntropy, SquaredError, get_cost
from thermoeqprop.models.layered import ACTIVATIONS, LayeredNetwork
from thermoeqprop.models.quadratic import QuadraticNetwork
from thermoeqprop.models.spin import LayeredSpinNetwork, SpinNetwork

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "CrossEntropy",
    "EnergyModel",
    "LayeredNetwork",
    "LayeredSpinNetwork",
    "QuadraticNetwork",
    "SpinNetwork",
    "SquaredError",
    "get_cost",
]
