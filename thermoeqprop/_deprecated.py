"""Renamed names kept one release as deprecated aliases (issue 14: one name per concept).

:func:`renamed_fields` lets a frozen dataclass take a field's former name as a keyword (and
answer to it as an attribute) with a ``FutureWarning`` naming the new one. The field itself is
renamed, so equality, hashing, ``repr`` and the ``config.json`` a run records see only the new
name; :func:`upgrade_record` translates a ``config.json`` written before the rename, so such a
run still resumes.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

__all__ = [
    "RENAMED_FIELDS",
    "RENAMED_OPTIONS",
    "renamed_argument",
    "renamed_fields",
    "upgrade_record",
]

#: Former field names by class name, ``{class: {old: new}}``; the aliases (and this table)
#: go one release after 0.2. Static, so :func:`upgrade_record` needs no model imported.
RENAMED_FIELDS: dict[str, dict[str, str]] = {
    # The scale of the initial couplings, as LayeredNetwork and QuadraticNetwork name it.
    "SpinNetwork": {"init_scale": "init_gain"},
    "LayeredSpinNetwork": {"init_scale": "init_gain"},
    # The std of the noise on the initial parameters (not a coupling scale, not a spread).
    "QuantumNetwork": {"init_scale": "init_noise"},
}


def _warn(cls: type, old: str, new: str) -> None:
    warnings.warn(
        f"{cls.__name__}.{old} is deprecated; use {new} (the old name goes in the next release)",
        FutureWarning,
        stacklevel=3,
    )


def renamed_fields(cls: type) -> type:
    """Class decorator: the dataclass accepts ``old=`` for each ``old: new`` of its entry in
    :data:`RENAMED_FIELDS` (the old name wins when both are given, as
    :func:`dataclasses.replace` passes every field) and reads ``obj.old`` as ``obj.new``, each
    with a ``FutureWarning``."""
    renames = RENAMED_FIELDS[cls.__name__]
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for old, new in renames.items():
            if old in kwargs:
                _warn(cls, old, new)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for old, new in renames.items():

        def read(self, old=old, new=new):
            _warn(type(self), old, new)
            return getattr(self, new)

        setattr(cls, old, property(read, doc=f"Deprecated alias of :attr:`{new}`."))
    return cls


#: Former option names in the ``"command_line"`` section of ``config.json`` (``--init-scale``
#: of ``sweep`` is ``--init-gain``).
RENAMED_OPTIONS = {"init_scale": "init_gain"}


def upgrade_record(record: Any) -> Any:
    """A ``config.json`` record with the former field names of :data:`RENAMED_FIELDS` (in
    every described dataclass, found by its ``"type"``) and of :data:`RENAMED_OPTIONS` (in
    ``"command_line"``) replaced by the new ones."""
    if isinstance(record, list):
        return [upgrade_record(v) for v in record]
    if not isinstance(record, dict):
        return record
    renames = dict(RENAMED_FIELDS.get(record.get("type"), {}))
    out = {}
    for key, value in record.items():
        if key == "command_line" and isinstance(value, dict):
            value = {RENAMED_OPTIONS.get(k, k): v for k, v in value.items()}
        out[renames.get(key, key)] = upgrade_record(value)
    return out


def renamed_argument(where: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """``new_value``, or ``old_value`` with a ``FutureWarning`` when the former keyword
    ``old`` of the function ``where`` was given (not None)."""
    if old_value is None:
        return new_value
    warnings.warn(
        f"{where}({old}=…) is deprecated; use {new}= (the old name goes in the next release)",
        FutureWarning,
        stacklevel=3,
    )
    return old_value
