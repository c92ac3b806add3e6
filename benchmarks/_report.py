"""Results files of the benchmarks: one markdown file per script, each run appended."""

from __future__ import annotations

import os


def append_run(path: str | os.PathLike, header: str, text: str) -> None:
    """Append one run's report ``text`` to ``path``, writing ``header`` first when the file
    does not exist yet (the runs of a script accumulate, newest last)."""
    exists = os.path.exists(path)
    with open(path, "a", encoding="utf-8") as handle:
        if not exists:
            handle.write(header)
        handle.write(text)
