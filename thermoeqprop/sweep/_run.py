"""``temperature_sweep``: validate, plan, run unit by unit (resumably), join."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xarray as xr
from jax.flatten_util import ravel_pytree

import thermoeqprop
from thermoeqprop._protocols import Estimator, Model
from thermoeqprop._provenance import ENVIRONMENT_KEY, run_environment
from thermoeqprop._resources import check_sweep_memory
from thermoeqprop._series import series_indices
from thermoeqprop.estimators.thermal import Sampling, parameter_names
from thermoeqprop.models.quadratic import QuadraticNetwork
from thermoeqprop.results import describe, fingerprint
from thermoeqprop.sweep._dataset import finalise, references
from thermoeqprop.sweep._folder import finished_part, open_folder, save_unit
from thermoeqprop.sweep._grid import Plan, run_unit
from thermoeqprop.sweep._spec import (
    GivenEstimator,
    check_sampling,
    check_seeds,
    check_temperatures,
    check_tempering,
    estimator_specs,
)

__all__ = ["temperature_sweep"]

DEFAULT_SAMPLING = Sampling()


#: What ``estimators`` takes: a name, an Estimator or a factory of the temperature, a
#: sequence of them, or a mapping from labels to them.
EstimatorChoice = str | Estimator | Callable[[float], Estimator]
Estimators = EstimatorChoice | Sequence[EstimatorChoice] | Mapping[str, EstimatorChoice]


def temperature_sweep(
    model: Model,
    params,
    x,
    targets,
    temperatures: Sequence[float],
    *,
    estimators: Estimators = ("covariance", "nudged"),
    seeds: Sequence[int] | int = (0, 1),
    beta: float = 0.1,
    sampling: Sampling | Mapping[str, Sampling] = DEFAULT_SAMPLING,
    control_variates: str | None = None,
    tempering: bool = False,
    series_parameters: int | Sequence[str | int] | None = None,
    results_dir: str | os.PathLike | None = None,
    progress: bool = False,
    callback: Callable[[str, xr.Dataset], None] | None = None,
    extra_config: dict[str, Any] | None = None,
    client: Any = None,
) -> xr.Dataset:
    r"""Run thermal gradient estimators across temperatures and seeds.

    Args:
        model: Any :class:`~thermoeqprop.Model`: a spin, quadratic or smooth layered network,
            or a qubit network (:class:`~thermoeqprop.quantum.QuantumNetwork`).
        params: Its parameters (a pytree).
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        temperatures: The grid, T > 0 (sorted increasingly in the result).
        estimators: Names, see :func:`parse_estimator` (``"covariance"``, ``"nudged"``,
            ``"nudged:0.05"``, ``"nudged-one-sided"``…; built by :mod:`thermoeqprop.registry`
            for the model's family), thermal :class:`~thermoeqprop.Estimator` objects (swept
            by ``dataclasses.replace(estimator, temperature=T)``) or factories
            ``temperature -> Estimator``; a sequence of them, or a mapping from labels (the
            ``estimator`` coordinate) to them. An estimator or factory is labelled by its
            class unless a mapping names it, brings its own sampler settings, and is compared
            with no exact expectation (its ``z_score`` is NaN). An estimator that gives no
            per-draw series (exact expectations, shots) gets NaN ``ess`` and ``rhat`` and
            saves no series; ``thermoeqprop diagnose`` lists it from ``sweep.nc``.
        seeds: Seeds; the key of each estimate derives from (seed, estimator, temperature).
        beta: β of nudged estimators named without one.
        sampling: Sampler settings, one for all estimators or a mapping from the names in
            ``estimators`` to settings (for example twice the draws for the covariance
            estimator, which samples one phase where the symmetric nudged one samples two).
            ``target_relative_stderr`` must be None: a sweep runs at a fixed budget.
        control_variates: ``control_variates`` of the estimators given by name (``"zv1"``,
            ``"zv2"``, ``"laplace"``, ``"heat_bath"``; docs/mathematics.md, "Control
            variates" and "Heat-bath control variates"); None: off.
        tempering: Run ONE parallel-tempering chain per seed (and nudge sign) whose ladder is
            the temperature grid, and read every temperature's estimate from its rung (needs
            at least two temperatures and ``sampling.tempering == 0``).
        series_parameters: Which gradient components' per-draw series are saved for ArviZ
            diagnostics: a count (evenly spaced over the raveled parameters; default 64, all
            for smaller models) or names/indices.
        results_dir: Folder to save into and resume from (see the module docstring).
        progress: Show a progress bar.
        callback: Called as ``callback(unit, part)`` after each unit is finished (and saved).
        extra_config: More JSON-friendly facts for ``config.json`` (not checked on resume).
        client: Run on Dask (:mod:`thermoeqprop.sweep._dask`): a ``dask.distributed.Client``,
            or ``"local:N"`` for an embedded cluster of N single-threaded worker processes,
            or a scheduler's address ``"tcp://HOST:PORT"`` (both closed afterwards). One task
            per estimator, seed and temperature (with tempering: per estimator and seed),
            each saved as it arrives; the result is the serial one's. None: run here.

    Returns:
        A Dataset with dims ``(estimator, temperature, seed, parameter)``; each variable's
        ``description`` attribute says what it is (``gradient``, ``stderr``, ``loss``,
        ``exact_gradient``, ``z_score``, ``cosine_zero_temperature``, ``rhat``, ``ess``…).
        With ``tempering``, also the ladder's swap rates and communication barrier:
        ``swap_probability``, ``swap_rate``, ``local_barrier`` (dims ``(estimator,
        pair_temperature, seed)``), ``cumulative_barrier`` ``(estimator, temperature, seed)``
        and ``global_barrier`` ``(estimator, seed)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 2, 1))
        >>> ds = temperature_sweep(net, net.init_params(jax.random.key(0)), jnp.ones((2, 2)),
        ...     jnp.ones((2, 1)), [0.1, 1.0], seeds=[0],
        ...     sampling=Sampling(num_chains=2, num_samples=50, num_warmup=50))
        >>> ds.gradient.dims, ds.sizes["parameter"]
        (('estimator', 'temperature', 'seed', 'parameter'), 9)
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a thermoeqprop.Model, got {type(model).__name__}")
    temps = check_temperatures(temperatures)
    seed_list = check_seeds(seeds)
    specs, raw = estimator_specs(estimators, beta, float(temps[0]))
    if control_variates is not None:
        specs = [
            spec if isinstance(spec, GivenEstimator)
            else dataclasses.replace(spec, control_variates=control_variates)
            for spec in specs
        ]  # fmt: skip
    labels = [s.label for s in specs]
    chosen = check_sampling(sampling, specs, raw)
    check_tempering(tempering, temps, chosen, specs, model)
    first = {  # validates model, sampler and β before any work
        spec.label: spec.build(model, float(temps[0]), chosen.get(spec.label)) for spec in specs
    }
    x, targets = model.validate_inputs(x, targets)
    if isinstance(model, QuadraticNetwork):
        model.check_positive_definite(params)
    check_scales_and_memory(model, params, temps, chosen.values(), len(x), bool(tempering))
    flat, _ = ravel_pytree(params)
    names = parameter_names(params)
    plan = Plan(
        model, params, x, targets, temps, specs, seed_list, chosen, bool(tempering), names,
        series_indices(names, series_parameters),
    )  # fmt: skip

    record = {
        "kind": "temperature_sweep",
        "model": describe(model),
        "temperatures": temps.tolist(),
        "estimators": labels,
        "seeds": seed_list,
        "sampling": {label: describe(value) for label, value in chosen.items()},
        "tempering": bool(tempering),
        **({} if control_variates is None else {"control_variates": control_variates}),
        "series_parameters": [names[i] for i in plan.series_indices],
        "data_sha256": fingerprint(flat, x, targets),
    }
    given = {s.label: describe(first[s.label]) for s in specs if isinstance(s, GivenEstimator)}
    if given:  # what each given estimator is, at the first temperature (checked on resume)
        record["given_estimators"] = given
    checked = set(record)
    extra = dict(extra_config or {}) | {ENVIRONMENT_KEY: run_environment()}
    record = json.loads(json.dumps(record | extra))
    attrs = {
        "title": "thermoeqprop temperature sweep",
        "thermoeqprop_version": thermoeqprop.__version__,
        "model": type(model).__name__,
        "tempering": int(bool(tempering)),
        "config": json.dumps(record),
    }

    if client is None:
        return _in_folder(results_dir, record, checked, plan, attrs, progress, callback)
    from thermoeqprop.sweep._dask import parse_cluster, sweep_client, worker_device_count

    if isinstance(client, str):
        parse_cluster(client)  # a bad address is refused before the folder is touched
    with sweep_client(client) as dask_client:
        # The folder records the workers' device count, which shards the estimates.
        devices = worker_device_count(dask_client)
        return _in_folder(results_dir, record, checked, plan, attrs, progress, callback,
                          dask_client, devices)  # fmt: skip


def _in_folder(results_dir, record, checked, plan, attrs, progress, callback, client=None,
               devices=None) -> xr.Dataset:  # fmt: skip
    """:func:`_run` in the results folder (if any), opened for ``devices`` (None: this
    process's), and released after."""
    folder = None if results_dir is None else open_folder(results_dir, record, checked, devices)
    try:
        return _run(plan, folder, attrs, progress, callback, client, devices)
    finally:
        if folder is not None:
            folder.release()


def _run(plan: Plan, folder, attrs, progress: bool, callback, client, devices) -> xr.Dataset:
    """The units not yet finished in ``folder`` (if any), here one by one or as tasks on
    ``client``'s cluster, then the joined Dataset.

    Here, ``sweep.nc`` is rewritten after every unit; on a cluster, where this process only
    records what the workers made, once at the end (or when the sweep is interrupted), as
    rewriting it would keep this process busy in place of the workers.
    """
    reference = functools.cache(lambda: references(plan))
    units = plan.units()
    order = [unit[0] for unit in units]
    tasks_per_unit = [len(plan.specs) * len(t) * len(s) for _, t, s in units]
    parts: dict[str, xr.Dataset] = {}
    todo = []
    for unit, tasks in zip(units, tasks_per_unit, strict=True):
        saved = finished_part(folder, unit[0]) if folder is not None else None
        if saved is not None:
            parts[unit[0]] = saved
        else:
            todo.append((unit, tasks))

    def joined() -> xr.Dataset:
        return finalise([parts[u] for u in order if u in parts], reference(), plan, attrs)

    def finish(unit: str, part: xr.Dataset, series=None) -> None:
        parts[unit] = part
        if folder is not None and client is None:
            save_unit(folder, unit, plan, part, series, joined())
        if callback is not None:
            callback(unit, part)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(tasks_per_unit), initial=sum(tasks_per_unit) - sum(t for _, t in todo),
                   desc="sweep", unit="estimate")  # fmt: skip

    def advance(n: int) -> None:
        if bar is not None:
            bar.update(n)

    fresh = len(parts)
    try:
        if client is None:
            for (unit, t_idx, s_idx), _ in todo:
                finish(unit, *run_unit(plan, t_idx, s_idx, advance))
        else:
            from thermoeqprop.sweep._dask import run_units

            run_units(client, plan, folder, [unit for unit, _ in todo], advance, finish,
                      meanwhile=reference, devices=devices)  # fmt: skip
        dataset = joined()
        if folder is not None:
            folder.write_dataset("sweep.nc", dataset)
        return dataset
    except BaseException:
        if folder is not None and client is not None and len(parts) > fresh:
            folder.write_dataset("sweep.nc", joined())  # the units finished before the stop
        raise
    finally:
        if bar is not None:
            bar.close()


def check_scales_and_memory(model, params, temperatures, samplings, num_examples, tempering):
    """Refuse temperatures the floats cannot resolve for this network
    (:func:`thermoeqprop._validation.check_temperature`) and a sweep that would not fit in
    memory (:func:`thermoeqprop._resources.check_sweep_memory`), before any work."""
    from thermoeqprop._validation import _dtype, _units, check_temperature, energy_scale

    scale = energy_scale(params, _units(model))
    for temperature in temperatures:
        check_temperature("temperature", float(temperature), scale, _dtype(params))
    check_sweep_memory(model, params, list(samplings), num_examples,
                       len(temperatures) if tempering else 0)  # fmt: skip
