"""The sweep's Dataset: exact references, and everything derived from them and the parts."""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from thermoeqprop._barrier import describe_barrier, joinable_parts
from thermoeqprop.estimators.thermal import ThermalExact
from thermoeqprop.estimators.zero_temperature import ImplicitDifferentiation
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.sweep._grid import Plan
from thermoeqprop.sweep._spec import has_exact_reference

__all__ = ["DESCRIPTIONS", "finalise", "references"]


def references(plan: Plan) -> xr.Dataset:
    """Exact thermal gradients and the T = 0 EP gradient, where they exist (energy models);
    an estimator given to the sweep (not named) has no known expectation (NaN)."""
    ref = xr.Dataset(
        coords={
            "estimator": [s.label for s in plan.specs],
            "temperature": plan.temperatures,
            "parameter": plan.names,
        }
    )
    num_p = len(plan.names)
    exact_at = _classical_exact if has_exact_reference(plan.model) else None
    if plan.model.family == "quantum":
        exact_at = _quantum_exact
    if exact_at is not None:
        exact_grad = np.empty((len(plan.temperatures), num_p))
        exact_loss = np.empty(len(plan.temperatures))
        expected = np.empty((len(plan.specs), len(plan.temperatures), num_p))
        for i, t in enumerate(plan.temperatures):
            exact_grad[i], exact_loss[i], expected[:, i] = exact_at(plan, float(t))
        ref["exact_gradient"] = (("temperature", "parameter"), exact_grad)
        ref["exact_loss"] = (("temperature",), exact_loss)
        ref["expected_gradient"] = (("estimator", "temperature", "parameter"), expected)
    if isinstance(plan.model, EnergyModel) and not plan.model.is_spin:
        zero = ImplicitDifferentiation(plan.model)(plan.params, plan.x, plan.targets)
        ref["zero_temperature_gradient"] = (("parameter",), np.asarray(ravel_pytree(zero.grad)[0]))
        ref["zero_temperature_loss"] = ((), float(zero.loss))
        ref["zero_temperature_min_hessian_eigenvalue"] = (
            (),
            float(zero.diagnostics["min_hessian_eigenvalue"]),
        )
    return ref


def _classical_exact(plan: Plan, temperature: float):
    """Exact dL_T/dθ, <C>_0 and each named estimator's exact expectation (enumeration or the
    Gaussian closed form); NaN for an estimator given to the sweep (its expectation is
    unknown)."""
    exact = ThermalExact(plan.model, temperature)
    result = exact(plan.params, plan.x, plan.targets)
    grad = ravel_pytree(result.grad)[0]
    expected = np.full((len(plan.specs), grad.size), np.nan)
    for e, spec in enumerate(plan.specs):
        if spec.kind == "covariance":
            expected[e] = grad
        elif spec.kind is not None:
            nudged = exact.nudged_gradient(plan.params, plan.x, plan.targets, spec.beta,
                                           spec.symmetric)  # fmt: skip
            expected[e] = ravel_pytree(nudged)[0]
    return grad, float(result.loss), expected


def _quantum_exact(plan: Plan, temperature: float):
    """A qubit network's exact dL_T/dθ by ``jax.grad`` through ``expm`` of the density
    matrix (a code path apart from the estimators'), its loss, and the exact expectation of
    each named estimator: the gradient for the Kubo–Mori covariance, the exact (shot-free)
    finite-β difference of the density matrices for the nudged one."""
    from thermoeqprop.quantum import ThermalEP, autodiff_thermal_loss

    loss_fn = autodiff_thermal_loss(plan.model, temperature)
    loss, grad = jax.value_and_grad(loss_fn)(plan.params, plan.x, plan.targets)
    grad = np.asarray(ravel_pytree(grad)[0])
    expected = np.full((len(plan.specs), grad.size), np.nan)
    for e, spec in enumerate(plan.specs):
        if spec.kind == "covariance":
            expected[e] = grad
        elif spec.kind == "nudged":
            nudged = ThermalEP(plan.model, temperature, method="nudged", beta=spec.beta)
            estimate = nudged(plan.params, plan.x, plan.targets, jax.random.key(0))
            expected[e] = ravel_pytree(estimate.grad)[0]
    return grad, float(loss), expected


def _norm(a: xr.DataArray) -> xr.DataArray:
    return np.sqrt((a**2).sum("parameter", skipna=False))


def _cosine(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    return (a * b).sum("parameter") / (_norm(a) * _norm(b))


DESCRIPTIONS = {
    "gradient": "sampled estimate of dL_T/dθ, L_T = <C>_0 (batch mean)",
    "stderr": "Monte Carlo standard error of gradient (from the ESS of its per-draw series)",
    "loss": "sampled <C> (covariance: free phase; symmetric nudged: mean of the ±β phases)",
    "loss_stderr": "Monte Carlo standard error of loss",
    "ess": "effective sample size of the mean of the per-draw gradient series (NaN: constant)",
    "rhat": "split R-hat of the per-draw gradient series (NaN: constant)",
    "ess_min": "smallest ess over parameters",
    "rhat_max": "largest rhat over parameters",
    "wall_time": "seconds for the estimate (a tempered run's time is shared by its rungs; "
    "the first estimate of a configuration includes compilation)",
    "num_steps": "sampler steps per example: phases × chains × (warm-up + draws)",
    "acceptance_rate": "mean acceptance probability (HMC/NUTS, Metropolis)",
    "flip_rate": "mean fraction of spins flipped per block-Gibbs sweep",
    "divergences": "number of divergent HMC/NUTS transitions",
    "mean_integration_steps": "mean leapfrog steps per HMC/NUTS draw",
    "swap_rate_min": "smallest mean swap probability over the tempering ladder's pairs",
    "round_trips": "mean completed replica round trips per chain (tempering)",
    "control_variate_gain": "norm of the gradient's MCSE without the control variates over "
    "that with them (below 1: the controls add noise; NaN: no control variates)",
    "exact_gradient": "exact dL_T/dθ (enumeration or Gaussian closed form; qubit networks: "
    "jax.grad through expm of the density matrix)",
    "exact_loss": "exact <C>_0",
    "expected_gradient": "exact expectation of the estimator: dL_T/dθ for covariance, the "
    "finite-β difference of exact <∂θE>_β for nudged (NaN: an estimator given to the sweep)",
    "bias": "expected_gradient − exact_gradient (the nudged estimator's finite-β bias)",
    "error": "gradient − exact_gradient",
    "error_norm": "‖gradient − exact_gradient‖ over parameters",
    "relative_error": "error_norm / ‖exact_gradient‖",
    "stderr_norm": "‖stderr‖ over parameters",
    "relative_stderr": "stderr_norm / ‖exact_gradient‖ (or / ‖gradient‖ without reference)",
    "z_score": "(gradient − expected_gradient) / stderr: Monte Carlo error in units of MCSE",
    "z_rms": "root mean square of z_score over parameters: for honest MCSEs z_rms² "
    "fluctuates about 1 like χ²_ν/ν with ν = error_dof, not ν = the number of parameters",
    "error_dof": "effective number of independent components of the gradient's Monte Carlo "
    "error: (tr R)²/tr(R²) of its correlation R over parameters, from batch means of the "
    "per-draw series (samplers.effective_components; NaN: no series)",
    "loss_error": "loss − exact_loss",
    "zero_temperature_gradient": "T = 0 EP gradient (implicit differentiation)",
    "zero_temperature_loss": "C(s*) at the free minimum",
    "zero_temperature_min_hessian_eigenvalue": "smallest Hessian eigenvalue at the free minimum",
    "cosine_zero_temperature": "cosine between gradient and the T = 0 EP gradient",
    "exact_cosine_zero_temperature": "cosine between exact_gradient and the T = 0 EP gradient",
}


def finalise(parts: list[xr.Dataset], reference: xr.Dataset, plan: Plan, attrs) -> xr.Dataset:
    """Join finished parts, add references and everything derived from them."""
    dim = "seed" if plan.tempering else "temperature"
    ds = xr.concat(
        joinable_parts(parts), dim=dim, data_vars="all", coords="different", compat="equals"
    )
    ds = ds.sortby(dim)
    reference = reference.sel(temperature=ds.temperature)
    ds = xr.merge([ds, reference], join="left", compat="no_conflicts")
    ds["ess_min"] = ds.ess.min("parameter")
    ds["rhat_max"] = ds.rhat.max("parameter")
    ds["stderr_norm"] = _norm(ds.stderr)
    if "exact_gradient" in ds:
        ds["error"] = ds.gradient - ds.exact_gradient
        ds["error_norm"] = _norm(ds.error)
        scale = _norm(ds.exact_gradient)
        ds["relative_error"] = ds.error_norm / scale
        ds["relative_stderr"] = ds.stderr_norm / scale
        ds["bias"] = ds.expected_gradient - ds.exact_gradient
        safe = ds.stderr.where(ds.stderr > 0)
        ds["z_score"] = (ds.gradient - ds.expected_gradient) / safe
        ds["z_rms"] = np.sqrt((ds.z_score**2).mean("parameter"))
        ds["loss_error"] = ds.loss - ds.exact_loss
    else:
        ds["relative_stderr"] = ds.stderr_norm / _norm(ds.gradient)
    if "zero_temperature_gradient" in ds:
        ds["cosine_zero_temperature"] = _cosine(ds.gradient, ds.zero_temperature_gradient)
        if "exact_gradient" in ds:
            ds["exact_cosine_zero_temperature"] = _cosine(
                ds.exact_gradient, ds.zero_temperature_gradient
            )
    ds = ds.assign_coords(
        beta=("estimator", [s.beta for s in plan.specs]),
        symmetric=("estimator", [int(s.symmetric) for s in plan.specs]),
    )
    for name, text in DESCRIPTIONS.items():
        if name in ds:
            ds[name].attrs["description"] = text
    describe_barrier(ds)
    ds.temperature.attrs["units"] = "energy units (k_B = 1)"
    ds.attrs.update(attrs)
    ds.attrs["complete"] = int(
        ds.sizes["temperature"] == len(plan.temperatures) and ds.sizes["seed"] == len(plan.seeds)
    )
    return ds
