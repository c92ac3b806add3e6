"""Every notebook in ``notebooks/`` runs top to bottom, on small settings, in a fresh kernel.

Each notebook reads ``THERMOEQPROP_NOTEBOOK_SMALL=1`` in its first code cell and then uses small
sample sizes and short scans; the committed notebooks (without outputs) run fuller settings when
a user opens them. The kernel is this interpreter's own (``sys.executable -m ipykernel_launcher``,
from a kernel spec the test writes), so the notebooks import the package under test. A cell
injected first turns warnings into errors inside the kernel, with the filters of pyproject.toml's
``[tool.pytest.ini_options] filterwarnings``; a cell appended last restores the kernel's own
filters (ipykernel warns during its shutdown). The notebook files are read, never written.

The notebooks check their numbers against exact references themselves (each raises if an
estimate is off by more than its stated tolerance); this module asserts that they ran without
error or warning and drew at least one figure.

Statistics: the sampled checks in the notebooks are at K = 5 Monte Carlo standard errors, a few
hundred of them in all: with honest MCSEs and Gaussian errors P(|z| > 5) ≈ 5.7e-7 each, so below
1e-3 per run (each notebook states its own budget). Seeds are fixed: a given code version passes
or fails reproducibly.

Cost: JAX compilation dominates (NUTS alone takes about 10 s to trace and compile), so the
notebooks run two at a time, each in its own kernel process, longest first.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
# Longest first, so that two workers finish together.
NOTEBOOKS = (
    "arviz_diagnostics",
    "low_temperature_limit",
    "temperature_sweep",
    "quantum_ep",
)
KERNEL_NAME = "thermoeqprop-notebook-test"
WORKERS = 2
CELL_TIMEOUT_S = 300

# Run last in the kernel: ipykernel 7 warns during its own shutdown, which must not become an
# error once the notebook is done.
RESTORE_WARNINGS_SOURCE = "_warnings_catcher.__exit__(None, None, None)"


def pytest_filterwarnings() -> list[str]:
    """The ``filterwarnings`` entries of pyproject.toml's pytest configuration."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["pytest"]["ini_options"].get("filterwarnings", []))


def warnings_cell_source(entries: list[str]) -> str:
    """Kernel code applying pytest-style filters ``action:message:category:module:lineno``
    in order, the later ones taking precedence (as pytest applies them), inside a
    ``warnings.catch_warnings`` that :data:`RESTORE_WARNINGS_SOURCE` closes."""
    return f"""\
import builtins as _builtins
import importlib as _importlib
import warnings as _warnings

def _category(name):
    if not name:
        return Warning
    if "." not in name:
        return getattr(_builtins, name)
    module, _, attribute = name.rpartition(".")
    return getattr(_importlib.import_module(module), attribute)

_warnings_catcher = _warnings.catch_warnings()
_warnings_catcher.__enter__()
for _entry in {entries!r}:
    _parts = [_p.strip() for _p in _entry.split(":")] + [""] * 4
    _action, _message, _name, _module, _lineno = _parts[:5]
    _warnings.filterwarnings(
        _action, message=_message, category=_category(_name), module=_module,
        lineno=int(_lineno) if _lineno else 0,
    )
del _entry, _parts, _action, _message, _name, _module, _lineno
"""


def write_kernel_spec(folder: Path) -> Path:
    """A Jupyter data folder holding one kernel spec: this interpreter with ipykernel."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "thermoeqprop (test)",
                "language": "python",
            }
        )
    )
    return folder


def execute(name: str, working_dir: Path):
    """Execute ``notebooks/{name}.ipynb`` in a fresh kernel; return the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell and its traceback) on the
    first cell that fails."""
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    setup = nbformat.v4.new_code_cell(warnings_cell_source(pytest_filterwarnings()))
    notebook.cells = [setup, *notebook.cells, nbformat.v4.new_code_cell(RESTORE_WARNINGS_SOURCE)]
    working_dir.mkdir(parents=True, exist_ok=True)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(working_dir)}},  # the kernel's working directory
    )
    # Our own event loop, closed at the end (nbclient's synchronous wrapper leaves one open per
    # worker thread, which the garbage collector reports as a ResourceWarning).
    asyncio.run(client.async_execute())
    return notebook


@pytest.fixture(scope="module")
def executed(request, tmp_path_factory):
    """The notebooks this session runs, all submitted at once to a pool of two workers;
    name → Future."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_notebook_runs_on_small_settings"
    }
    folder = tmp_path_factory.mktemp("notebooks")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(write_kernel_spec(folder / "jupyter")))
        patch.setenv("THERMOEQPROP_NOTEBOOK_SMALL", "1")
        # The notebooks write their figures and results under tempfile.mkdtemp(): keep them in
        # pytest's temporary folder, not in the system's.
        (folder / "tmp").mkdir()
        patch.setenv("TMPDIR", str(folder / "tmp"))
        # conftest.py sets MPLBACKEND=Agg for this process; the kernel must pick its own
        # (inline) backend, or figures would never reach the notebook's outputs.
        patch.delenv("MPLBACKEND", raising=False)
        with ThreadPoolExecutor(max_workers=min(WORKERS, os.cpu_count() or 1)) as pool:
            futures = {
                name: pool.submit(execute, name, folder / name)
                for name in NOTEBOOKS
                if name in selected
            }
            yield futures
            for future in futures.values():  # let no kernel outlive the environment
                future.cancel()


def test_the_notebooks_exist_and_are_committed_clean():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and "THERMOEQPROP_NOTEBOOK_SMALL" in code[0].source, name
        for cell in code:
            assert not cell.outputs and cell.execution_count is None, (
                f"{name}.ipynb is committed with outputs; clear them"
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_small_settings(name, executed):
    notebook = executed[name].result()  # re-raises the notebook's CellExecutionError
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, errors
    stderr = "".join(
        out.text for out in outputs if out.output_type == "stream" and out.name == "stderr"
    )
    assert "Warning" not in stderr, stderr
    images = [
        out
        for out in outputs
        if out.output_type in ("display_data", "execute_result") and "image/png" in out.data
    ]
    assert images, f"{name}.ipynb drew no figure"
