"""The documentation: it builds with ``mkdocs build --strict``, and what the repository cites
of it exists.

Code, tests, notebooks and the README cite the documentation by path and, for a section, by
anchor (``docs/mathematics.md#kubo-mori-covariance``) or by heading
(``docs/mathematics.md, section "Kubo-Mori covariance"``). Every cited path must exist and
every cited anchor or heading must be a heading of that page, with the anchor that mkdocs (and
GitHub) derive from it. The CLI pages must list every option of their command with its
default. The build test needs the ``docs`` extra (``pip install ".[docs]"``, as CI installs)
and is skipped without it; the others need nothing beyond the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".txt"}
# Folders never searched (anywhere), and run outputs at the top of the checkout.
SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIPPED_TOP = {"site", "build", "dist", "results"}
CITATION = re.compile(
    r"(?<![\w/.-])docs/(?P<path>[\w.-]+(?:/[\w.-]+)*/?)?(?P<anchor>#[\w-]+)?"
    r"(?P<sections>,? sections? (?:[\"“][^\"”\n]+[\"”](?:,? (?:and )?)?)+)?"
)
QUOTED = re.compile(r"[\"“]([^\"”\n]+)[\"”]")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slugify(text: str) -> str:
    """The anchor Python-Markdown's ``toc`` extension (mkdocs' default) gives a heading."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(page: Path) -> list[str]:
    """The headings of a Markdown page, outside fenced code blocks."""
    out, fenced = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            out.append(re.sub(r"\s*\{[^}]*\}$", "", match.group(2)).replace("`", ""))
    return out


def cited_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / ".ci" / "run"]
    for path in ROOT.rglob("*"):
        folders = path.relative_to(ROOT).parts[:-1]
        if (
            set(folders) & SKIPPED_DIRS
            or (folders and folders[0] in SKIPPED_TOP)
            or any(p.startswith((".venv", "venv")) or p.endswith(".egg-info") for p in folders)
        ):
            continue
        if path.is_file() and path.suffix in SUFFIXES and path not in files:
            files.append(path)
    return [f for f in files if f.exists()]


def citations() -> list[tuple[str, str, str | None, list[str]]]:
    """(where, path under docs/, anchor or None, cited headings) for every citation."""
    found = []
    for file in cited_files():
        text = file.read_text(errors="ignore")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            path = (match.group("path") or "").rstrip(".")
            anchor = match.group("anchor")
            sections = QUOTED.findall(match.group("sections") or "")
            where = f"{file.relative_to(ROOT)}:{line}"
            found.append((where, path, anchor[1:] if anchor else None, sections))
    return found


def test_the_repository_cites_its_documentation():
    found = citations()
    pages = {path for _, path, _, _ in found}
    # The code, the tests, the notebooks and the README all point into docs/.
    assert {"mathematics.md", "design.md"} <= pages, pages
    assert any(where.startswith("notebooks/") for where, *_ in found)
    assert any(where.startswith("README.md") for where, *_ in found)


def test_every_cited_page_anchor_and_section_exists():
    missing = []
    for where, path, anchor, sections in citations():
        target = DOCS / path
        if not target.exists():
            missing.append(f"{where}: docs/{path} does not exist")
            continue
        if anchor is None and not sections:
            continue
        if target.suffix != ".md":
            missing.append(f"{where}: docs/{path} is not a page, it has no sections")
            continue
        titles = headings(target)
        if anchor is not None and anchor not in {slugify(t) for t in titles}:
            missing.append(f"{where}: docs/{path} has no heading with anchor #{anchor}")
        for section in sections:
            if section not in titles:
                missing.append(f"{where}: docs/{path} has no section {section!r}")
    assert missing == []


def test_anchors_are_unique_within_each_page():
    # A repeated heading gets a suffixed anchor (#name_1): citations of it would be fragile.
    for page in DOCS.rglob("*.md"):
        slugs = [slugify(t) for t in headings(page)]
        assert len(slugs) == len(set(slugs)), (page, sorted(s for s in slugs if slugs.count(s) > 1))


def test_the_slugs_are_mkdocs_own():
    toc = pytest.importorskip("markdown.extensions.toc")
    for page in (DOCS / "mathematics.md", DOCS / "design.md"):
        for title in headings(page):
            assert slugify(title) == toc.slugify(title, "-"), title


def _default_text(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction) or action.default is False:
        return "off"
    if action.default is None:
        return "—"
    if isinstance(action.default, list):
        return "`" + " ".join(map(str, action.default)) + "`"
    return f"`{action.default}`"


def test_each_command_has_a_page_listing_its_options_and_defaults():
    from thermoeqprop.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    nav = (ROOT / "mkdocs.yml").read_text()
    problems = []
    for name, command in sub.choices.items():
        page = DOCS / "cli" / f"{name}.md"
        if not page.exists():
            problems.append(f"no page docs/cli/{name}.md")
            continue
        if f"cli/{name}.md" not in nav:
            problems.append(f"docs/cli/{name}.md is not in mkdocs.yml's nav")
        rows = [line for line in page.read_text().splitlines() if line.startswith("| `")]
        for action in command._actions:
            if action.dest == "help":
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest.upper()
            row = next((r for r in rows if re.match(rf"\| `{re.escape(flag)}[ `]", r)), None)
            if row is None:
                problems.append(f"docs/cli/{name}.md does not list {flag}")
            elif f"| {_default_text(action)} |" not in row:
                problems.append(f"docs/cli/{name}.md: {flag}'s default is not {action.default}")
    assert problems == []


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
    reason='needs the docs extra: pip install ".[docs]"',
)
def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner, not a warning
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    for page in ("index.html", "mathematics/index.html", "cli/train/index.html",
                 "api/thermoeqprop/index.html", "api/samplers/index.html"):  # fmt: skip
        assert (tmp_path / page).is_file(), page
    api = (tmp_path / "api" / "thermoeqprop" / "index.html").read_text()
    assert "ThermalCovariance" in api and "GradientEstimate" in api
