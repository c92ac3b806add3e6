"""Test modules live in folders without __init__.py, so their basenames must be unique:
two ``test_thermal.py`` files would make pytest refuse to collect the second."""

from collections import Counter
from pathlib import Path


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("*.py") if p.name != "conftest.py")
    assert [name for name, count in names.items() if count > 1] == []
