"""What the ``thermoeqprop`` commands share beyond their options: the network an options
group describes, the sampler settings, and the summary a run ends with."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from thermoeqprop._health import PARETO_K_MAX
from thermoeqprop.options import ModelOptions, SamplingOptions
from thermoeqprop.results import RunFolder

__all__ = ["build_model", "build_sampling", "write_summary"]

#: ``--collapse`` → :attr:`Sampling.collapse`.
COLLAPSE = {"auto": None, "on": True, "off": False}


def build_model(options: ModelOptions, sizes: Sequence[int], init_gain: float | None = None):
    """The network ``options.model`` with layer sizes ``sizes`` (inputs, hidden…, outputs);
    ``init_gain`` the scale of its initial couplings (None: the model's own)."""
    from thermoeqprop.models import LayeredNetwork, QuadraticNetwork, SpinNetwork, get_cost

    kind, kwargs = options.model, {}
    if init_gain is not None:
        kwargs["init_gain"] = init_gain
    if kind == "spin":
        return SpinNetwork.layered(tuple(sizes), cost=get_cost(options.cost), **kwargs)
    if kind == "quadratic":
        if options.cost != "squared_error":
            raise ValueError(
                f"the quadratic model needs cost 'squared_error', got {options.cost!r}"
            )
        return QuadraticNetwork(tuple(sizes), **kwargs)
    return LayeredNetwork(
        tuple(sizes), activation=options.activation, cost=get_cost(options.cost), **kwargs
    )


def build_sampling(options: SamplingOptions, model, *, replicas: int = 0, command: str = ""):
    """The :class:`~thermoeqprop.estimators.Sampling` of the sampling options, for ``model``.

    ``--sampler auto`` means the same in every command: HMC for continuous states, block
    Gibbs (Metropolis without blocks) for spins. ``sweep`` picked NUTS for continuous states
    before 0.2; it says so once (``command``), pointing to ``--sampler nuts``.
    ``replicas``: parallel-tempering replicas of the sampler itself (0: none).
    """
    from thermoeqprop.estimators import Sampling

    method = options.sampler
    if method == "auto" and not model.is_spin:
        method = "hmc"
        if command == "sweep":
            print(
                "thermoeqprop sweep: note: --sampler auto now means HMC for continuous states "
                "in every command (sweep picked NUTS before 0.2); give --sampler nuts for the "
                "old choice",
                file=sys.stderr,
            )
    share = _neyman_share(options.neyman_share, method)
    return Sampling(
        method=method,
        num_chains=options.num_chains,
        num_samples=options.num_samples,
        num_warmup=options.num_warmup,
        hmc_steps=options.hmc_steps,
        hmc_jitter=options.hmc_jitter,
        tempering=replicas,
        start=options.start,
        collapse=COLLAPSE[options.collapse],
        mode_jumps=options.mode_jumps == "on",
        dtype=options.sampler_dtype,
        neyman_share=share,
        pareto_fallback=_pareto_fallback(options.pareto_fallback, method),
        pareto_smoothing=SMOOTHING[options.pareto_smoothing],
        **_top_up(options, method, share),
    )


#: ``--pareto-smoothing``: None (not given) leaves ``Sampling``'s default, on with importance
#: sampling.
SMOOTHING = {None: None, "on": True, "off": False}


#: ``--neyman-share``'s default with ``--sampler importance``.
NEYMAN_SHARE = 0.25


def _neyman_share(share, method: str) -> float:
    """``--neyman-share``: as given, or :data:`NEYMAN_SHARE` for importance sampling."""
    if share is not None:
        return share
    return NEYMAN_SHARE if method == "importance" else 0.0


#: ``--pareto-fallback``'s default with ``--sampler importance``: the k̂ above which importance
#: weights are not to be trusted.
PARETO_FALLBACK = PARETO_K_MAX


def _pareto_fallback(limit, method: str) -> float | None:
    """``--pareto-fallback``: as given (``inf``: never, None), or :data:`PARETO_FALLBACK` for
    importance sampling."""
    if limit is None:
        return PARETO_FALLBACK if method == "importance" else None
    return None if limit == float("inf") else limit


#: train's ``--target-relative-stderr`` when not given, with importance sampling and Neyman
#: allocation (whose later rounds add a few rows, not a batch of draws): a batch gradient's
#: relative MCSE to reach. Other samplers draw one round unless the flag is given.
TARGET_RELATIVE_STDERR = 0.2

#: The rounds after the first that train's ``--target-relative-stderr`` may add: rounds of
#: Neyman allocation's extra rows (:data:`ROW_ROUNDS`), or of the whole batch's draws.
ROW_ROUNDS = 6
TOP_UP_ROUNDS = 3


def _top_up(options, method: str, neyman_share: float) -> dict:
    """``Sampling``'s ``target_relative_stderr`` and ``max_rounds`` for ``train``'s
    ``--target-relative-stderr`` (other commands have none; ``inf``: none). Not given: the
    :data:`TARGET_RELATIVE_STDERR` with importance sampling and Neyman allocation, none
    otherwise. At most :data:`ROW_ROUNDS` rounds of extra rows after the first, or
    :data:`TOP_UP_ROUNDS` rounds of the whole batch's draws with another sampler."""
    if not hasattr(options, "target_relative_stderr"):
        return {}
    rows = method == "importance" and neyman_share > 0
    target = options.target_relative_stderr
    if target is None and rows:
        target = TARGET_RELATIVE_STDERR
    if target is None or target == float("inf"):
        return {}
    return {"target_relative_stderr": target,
            "max_rounds": 1 + (ROW_ROUNDS if rows else TOP_UP_ROUNDS)}  # fmt: skip


def write_summary(results_dir: Path, lines: list[str]) -> None:
    """Write ``summary.txt`` (atomically) and print it."""
    RunFolder(results_dir).write_text("summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
