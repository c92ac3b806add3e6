"""A griffe extension for the API pages: a docstring's ``Example:`` section is an example.

The package's docstrings head their doctests ``Example:`` (they run as tests; see
docs/design.md#code-style). Griffe's Google-style parser knows only ``Examples:`` and would
render the singular form as an admonition of Markdown text, where doctest output such as
``[0.5, 0.25]`` reads as a link. This extension renames the heading when griffe loads a
docstring, so the doctests render as code; the source files are not touched.
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", docstring.value)
