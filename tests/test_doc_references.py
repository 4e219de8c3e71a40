"""Documents name only what exists: repository paths, links, and the tests they cite.

Scanned: ``README.md``, ``docs/*.md``, and the docstrings and comments of the Python
files under ``notifier/`` and ``tests/`` (strings the code itself uses are the code's
business). Two kinds of reference are checked:

- a repository path (``docs/delivery.md``, ``notifier/outbox/``, ``tests/js``,
  ``templates/burger_receipt.j2``, a top-level ``README.md``) and a relative Markdown link
  (``[api.md](api.md#errors)``, its anchor included) must lead to something;
- ``tests/<file>.py::<test>`` must name a test function defined in that file.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

from tests.test_deployment_docs import heading_anchors

ROOT = Path(__file__).resolve().parent.parent

#: Paths the documents name on purpose although the repository does not hold them.
NOT_IN_THE_REPOSITORY = {
    "deploy/.env": "the operator's secrets file, kept out of version control",
}

# A path starts at a known top-level folder, not inside a URL or a longer path
# (``/v1/templates``, ``POST /bench/empty``), and holds no placeholders (``<name>``).
_PATH = re.compile(
    r"(?<![\w./-])((?:bench|deploy|docs|notifier|templates|tests)/[\w.-]+(?:/[\w.-]+)*)"
)
# A top-level Markdown file: README.md, and any other such name a document cites.
_TOP_LEVEL_DOC = re.compile(r"(?<![\w./-])([A-Z][A-Za-z_-]*\.md)\b")
_TEST_REFERENCE = re.compile(r"(?<![\w./-])((?:tests/)?test_\w+\.py)::(\w+)")
# [text](target): relative targets only; URLs and mail addresses are not files.
_LINK = re.compile(r"\]\(([^)\s]+)\)")

MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PYTHON = sorted([*(ROOT / "notifier").rglob("*.py"), *(ROOT / "tests").glob("*.py")])


@cache
def prose(source: Path) -> str:
    """What a reader reads in ``source``: all of a Markdown file; the docstrings and
    comments of a Python file."""
    text = source.read_text(encoding="utf-8")
    if source.suffix == ".md":
        return text
    parts = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                parts.append(docstring)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            parts.append(token.string)
    return "\n".join(parts)


@cache
def defined_tests(test_file: Path) -> frozenset[str]:
    """The test functions a test module defines, at module level or in classes."""
    tree = ast.parse(test_file.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


def name(source: Path) -> str:
    return str(source.relative_to(ROOT))


@pytest.mark.parametrize("source", MARKDOWN + PYTHON, ids=name)
def test_every_repository_path_named_exists(source: Path) -> None:
    text = prose(source)
    paths = {path.rstrip(".") for path in _PATH.findall(text)} | set(_TOP_LEVEL_DOC.findall(text))
    missing = sorted(
        path for path in paths if path not in NOT_IN_THE_REPOSITORY and not (ROOT / path).exists()
    )
    assert not missing, f"{name(source)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("source", MARKDOWN + PYTHON, ids=name)
def test_every_cited_test_exists(source: Path) -> None:
    wrong = []
    for file, test in _TEST_REFERENCE.findall(prose(source)):
        test_file = ROOT / (file if file.startswith("tests/") else f"tests/{file}")
        if not test_file.is_file():
            wrong.append(f"{file}::{test} (no such file)")
        elif test not in defined_tests(test_file):
            wrong.append(f"{file}::{test} (no such test in {test_file.name})")
    assert not wrong, f"{name(source)} cites tests that do not exist: {wrong}"


@pytest.mark.parametrize("source", MARKDOWN, ids=name)
def test_every_relative_link_leads_somewhere(source: Path) -> None:
    broken = []
    for target in _LINK.findall(source.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve() if path_part else source
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{name(source)} has broken links: {broken}"
