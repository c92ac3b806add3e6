"""The low-temperature limit: the Laplace expansion and the T → 0 study.

The formulas are in docs/mathematics.md#low-temperature-limit.

- :func:`laplace_expansion`, :func:`laplace_average`: ``⟨f⟩_T = f(s*) + T f_1 + O(T²)`` with
  JAX Hessians and contracted third derivatives.
- :func:`low_temperature_gradient`: ``dL_T/dθ = g_0 + T g_1 + O(T²)``, both by implicit
  differentiation through :func:`free_minimum`; :class:`LowTemperatureExpansion` wraps it as
  an estimator.
- :func:`low_temperature_study`, :func:`plot_low_temperature_study`: sampled thermal
  gradients over a grid of low temperatures against ``g_0 + T g_1``, with a weighted fit of
  the slope.
"""

from thermoeqprop.lowtemp._expansion import (
    LaplaceExpansion,
    LowTemperatureExpansion,
    LowTemperatureGradient,
    free_minimum,
    laplace_average,
    laplace_expansion,
    low_temperature_gradient,
)
from thermoeqprop.lowtemp._fit import weighted_line_fit
from thermoeqprop.lowtemp._plot import plot_low_temperature_study
from thermoeqprop.lowtemp._study import DEFAULT_TEMPERATURES, ESTIMATORS, low_temperature_study

__all__ = [
    "DEFAULT_TEMPERATURES",
    "ESTIMATORS",
    "LaplaceExpansion",
    "LowTemperatureExpansion",
    "LowTemperatureGradient",
    "free_minimum",
    "laplace_average",
    "laplace_expansion",
    "low_temperature_gradient",
    "low_temperature_study",
    "plot_low_temperature_study",
    "weighted_line_fit",
]
