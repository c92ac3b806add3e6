"""What dense matrices of n qubits cost, checked against this machine's memory before any
is made (the dense paths refuse with a message that names the sparse path)."""

from __future__ import annotations

import os

__all__ = ["available_memory_bytes"]


def _dense_bytes(num_qubits: int, copies: int, itemsize: int = 16) -> int:
    d = 1 << num_qubits
    return copies * d * d * itemsize


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def available_memory_bytes() -> int:
    """Physical memory of this machine in bytes (the bound for dense requests)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 1024**3


def _check_dense_size(num_qubits: int, copies: int, itemsize: int = 16) -> None:
    """Raise if ``copies`` dense d×d matrices of ``num_qubits`` qubits exceed this machine."""
    need = _dense_bytes(num_qubits, copies, itemsize)
    have = available_memory_bytes()
    if need > have:
        raise ValueError(
            f"a dense request on {num_qubits} qubits needs about {_format_bytes(need)} "
            f"({copies} matrices of {1 << num_qubits}×{1 << num_qubits} entries of {itemsize} "
            f"bytes), more than the {_format_bytes(have)} of memory on this machine; use the "
            f"sparse path instead (solver='sparse': Lanczos on a sparse matrix, for the ground "
            f"state and a few low levels), or fewer qubits"
        )
