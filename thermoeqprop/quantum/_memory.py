"""What dense matrices of n qubits cost, checked against this machine's memory before any
is made (the dense paths refuse with a message that names the sparse path). The machine's
memory is :func:`thermoeqprop._resources.available_memory_bytes`, as for whole runs."""

from __future__ import annotations

from thermoeqprop._resources import available_memory_bytes, format_bytes

__all__ = ["available_memory_bytes"]


def _dense_bytes(num_qubits: int, copies: int, itemsize: int = 16) -> int:
    d = 1 << num_qubits
    return copies * d * d * itemsize


def _check_dense_size(num_qubits: int, copies: int, itemsize: int = 16) -> None:
    """Raise if ``copies`` dense d×d matrices of ``num_qubits`` qubits exceed this machine."""
    need = _dense_bytes(num_qubits, copies, itemsize)
    have = available_memory_bytes()
    if need > have:
        raise ValueError(
            f"a dense request on {num_qubits} qubits needs about {format_bytes(need)} "
            f"({copies} matrices of {1 << num_qubits}×{1 << num_qubits} entries of {itemsize} "
            f"bytes), more than the {format_bytes(have)} of memory available on this machine; "
            "use the sparse path instead (solver='sparse': Lanczos on a sparse matrix, for the "
            "ground state and a few low levels), or fewer qubits"
        )
