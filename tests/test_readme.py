"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has Python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    error = float(re.search(r"relative error ([0-9.e+-]+)", out).group(1))
    assert error < 1e-4
    # The thermal example: 39 components at 4 MCSE (false failure about 0.3 %).
    worst = float(re.search(r"largest \|error\| / MCSE: ([0-9.e+-]+)", out).group(1))
    assert worst < 4
