"""Ready-made qubit networks: a classifier and the sensor-pair network of experiments.

Each is one example of :class:`~thermoeqprop.quantum.QuantumNetwork`; any list of terms builds
a :class:`~thermoeqprop.quantum.Hamiltonian`. :func:`projector` builds the projector on a
computational basis state of some qubits, an output observable whose expectation is a
probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from thermoeqprop._deprecated import renamed_argument
from thermoeqprop.quantum._costs import ExpectationLoss, SquaredErrorCost
from thermoeqprop.quantum._network import Hamiltonian, QuantumNetwork
from thermoeqprop.quantum._pauli import PauliSum, pauli
from thermoeqprop.quantum._terms import Term, input_driven, trainable

__all__ = ["classifier_network", "projector", "sensor_network"]


def projector(bits: Mapping[int, int], num_qubits: int) -> PauliSum:
    """``|b⟩⟨b|`` on the qubits of ``bits`` (identity on the others) as a Pauli sum:
    ``Π_q (1 + (−1)^{b_q} Z_q) / 2``, whose expectation is the probability of reading ``b``.

    Args:
        bits: Qubit index → bit (0 or 1).
        num_qubits: Qubits of the network.

    Example:
        >>> p = projector({0: 0, 1: 1}, 2)
        >>> p.to_dense().real.diagonal().tolist()  # |01⟩: qubit 0 reads 0, qubit 1 reads 1
        [0.0, 1.0, 0.0, 0.0]
    """
    if not bits:
        raise ValueError("projector needs at least one qubit")
    for q, b in bits.items():
        if b not in (0, 1):
            raise ValueError(f"projector bits must be 0 or 1, got {b!r} for qubit {q}")
    qubits = sorted(bits)
    terms = []
    for mask in range(1 << len(qubits)):  # I, Z_a, Z_b, Z_a Z_b, …: the first qubit fastest
        chosen = [q for i, q in enumerate(qubits) if mask >> i & 1]
        sign = (-1.0) ** sum(bits[q] for q in chosen)
        terms.append((sign / (1 << len(qubits)), {q: "Z" for q in chosen}))
    return PauliSum.of([(c, ops if ops else "I" * num_qubits) for c, ops in terms], num_qubits)


def classifier_network(
    num_qubits: int = 6,
    num_inputs: int = 2,
    *,
    output_qubits: Sequence[int] = (0,),
    couplings: str = "all",
    transverse_field: float = 1.0,
    input_scale: float = 1.0,
    cost: Any = None,
    init_noise: float = 0.1,
    init_scale: float | None = None,
) -> QuantumNetwork:
    """A ready-made classifier: inputs as fields, trainable couplings and fields.

    ``H = Σ_{q,i} w_{qi} x_i Z_q + Σ_q (h_q X_q + b_q Z_q) + Σ_{(q,r)} (J_qr Z_qZ_r + K_qr X_qX_r)``
    with trainable input weights ``w`` (initialised at ``input_scale``, alternating sign across
    qubits), transverse fields ``h`` (initialised at ``transverse_field``), biases ``b`` and
    couplings over all pairs (``couplings="all"``) or a ring (``"ring"``). Outputs are ``Z`` on
    ``output_qubits``. It is one example; any list of terms builds a :class:`Hamiltonian`.
    """
    if couplings not in ("all", "ring"):
        raise ValueError(f"couplings must be 'all' or 'ring', got {couplings!r}")
    n = num_qubits
    terms: list[Term] = []
    for q in range(n):
        for i in range(num_inputs):
            sign = 1.0 if (q + i) % 2 == 0 else -1.0
            terms.append(
                input_driven({q: "Z"}, i, sign * input_scale, trainable=True, num_qubits=n)
            )
    for q in range(n):
        terms.append(trainable({q: "X"}, transverse_field, num_qubits=n))
        terms.append(trainable({q: "Z"}, 0.0, num_qubits=n))
    if couplings == "all":
        pairs = [(q, r) for q in range(n) for r in range(q + 1, n)]
    else:
        pairs = [(q, (q + 1) % n) for q in range(n)] if n > 2 else [(0, 1)]
    for q, r in pairs:
        terms.append(trainable({q: "Z", r: "Z"}, 0.0, num_qubits=n))
        terms.append(trainable({q: "X", r: "X"}, 0.0, num_qubits=n))
    outputs = tuple(pauli({q: "Z"}, n) for q in output_qubits)
    for q in output_qubits:
        if not 0 <= q < n:
            raise ValueError(f"output qubit {q} is out of range 0 … {n - 1}")
    return QuantumNetwork(
        Hamiltonian(n, tuple(terms), num_inputs),
        outputs,
        SquaredErrorCost() if cost is None else cost,
        renamed_argument("classifier_network", "init_scale", "init_noise", init_scale, init_noise),
    )


def sensor_network(
    chain: int = 8,
    *,
    sensor_links: int = 2,
    transverse_field: float = 1.0,
    input_scale: float = 1.0,
    cost: Any = None,
    init_noise: float | Mapping[str, float] = 0.1,
    init_scale: float | Mapping[str, float] | None = None,
) -> QuantumNetwork:
    """A spin chain read out by a sensor pair, the network of published quantum EP experiments.

    Qubits ``0 … chain − 1`` form the chain, ``chain`` and ``chain + 1`` the sensors. Inputs
    ``x_q Z_q`` on the chain (fixed scale ``input_scale``, ``num_inputs = chain``). Trainable:
    ``X_q`` (initialised at ``transverse_field``) and ``Z_q`` (at 0) on every qubit; ``ZZ``,
    ``XX``, ``YY`` on each chain bond; ``ZZ``, ``XX`` on the sensor pair and between each of
    the last ``sensor_links`` chain qubits and each sensor (couplings at 0). Outputs: the
    projectors on ``|00⟩``, ``|01⟩``, ``|10⟩`` of the sensor pair (:func:`projector`), whose
    expectations are readout probabilities; cost ``ExpectationLoss.squared_error()`` unless
    given. At ``chain=8``: 10 qubits and 51 trainable terms (2·10 fields, 3·7 bonds, 2 + 2·2·2
    sensor couplings).

    Example:
        >>> net = sensor_network(8)
        >>> (net.num_qubits, net.hamiltonian.num_params, net.num_outputs)
        (10, 51, 3)
        >>> sorted(set(net.hamiltonian.parameter_groups))
        ['coupling', 'field']
    """
    if not (isinstance(chain, int) and chain >= 2):
        raise ValueError(f"chain must be an integer ≥ 2 (chain qubits), got {chain!r}")
    if not (isinstance(sensor_links, int) and 1 <= sensor_links <= chain):
        raise ValueError(
            f"sensor_links must be an integer in 1 … {chain} (chain qubits coupled to the "
            f"sensors), got {sensor_links!r}"
        )
    n, sensors = chain + 2, (chain, chain + 1)
    terms = [input_driven({q: "Z"}, q, input_scale, num_qubits=n) for q in range(chain)]
    for q in range(n):
        terms += [trainable({q: "X"}, transverse_field, num_qubits=n),
                  trainable({q: "Z"}, 0.0, num_qubits=n)]  # fmt: skip
    pairs = [(q, q + 1, "ZZ XX YY") for q in range(chain - 1)] + [(*sensors, "ZZ XX")]
    pairs += [(c, s, "ZZ XX") for c in range(chain - sensor_links, chain) for s in sensors]
    for a, b, kinds in pairs:
        for p in kinds.split():
            terms.append(trainable({a: p[0], b: p[1]}, 0.0, num_qubits=n))
    outputs = tuple(projector(dict(zip(sensors, bits, strict=True)), n)
                    for bits in ((0, 0), (0, 1), (1, 0)))  # fmt: skip
    return QuantumNetwork(
        Hamiltonian(n, tuple(terms), num_inputs=chain),
        outputs,
        ExpectationLoss.squared_error() if cost is None else cost,
        renamed_argument("sensor_network", "init_scale", "init_noise", init_scale, init_noise),
    )
