"""Every document a docstring names is in the repository: `docs/...` paths and `*.md` files,
found from the repository root or from the folder of the file that names them.

The design brief the project started from lives outside the repository; what the code points
to is the project's own documentation (docs/architecture.md and the READMEs).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Components, generators and tests. Not bench/: its docstrings name the result files each
# run writes (results/*.md), which exist only once it has run.
FOLDERS = ("contract", "operator", "router", "sim", "cli", "tools", "tests")
DOCUMENT = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md\b|docs/[\w./-]*[\w-])")
DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, DOCSTRING_OWNERS) and (text := ast.get_docstring(node, clean=False)):
            yield text


def _exists(reference: str, named_in: Path) -> bool:
    """From the repository root, or from the naming file's folder or one of its parents."""
    candidates = [REPO, *named_in.parents]
    return any((base / reference).exists() for base in candidates if base.is_relative_to(REPO))


def test_every_document_a_docstring_names_exists() -> None:
    missing = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for text in _docstrings(path):
                for reference in DOCUMENT.findall(text):
                    if not _exists(reference, path):
                        missing.append(f"{path.relative_to(REPO)}: {reference}")
    assert not missing, "docstrings name documents that are not in the repository:\n" + "\n".join(
        missing
    )


def test_the_architecture_document_names_existing_paths() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:[\w.-]+/)+[\w.*-]*)`", text))
    # Paths in the repository's folders (not API groups such as inference.factory.dev/...).
    paths = {p for p in named if "*" not in p and (REPO / p.split("/")[0]).is_dir()}
    assert len(paths) > 20, sorted(paths)
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_the_pattern_finds_documents() -> None:
    text = "see docs/architecture.md, router/README.md and DESIGN.md; not docs. nor x.mdx"
    assert DOCUMENT.findall(text) == ["docs/architecture.md", "router/README.md", "DESIGN.md"]
    assert not _exists("DESIGN.md", REPO / "router" / "factory_router" / "main.py")
    assert _exists("README.md", REPO / "router" / "factory_router" / "main.py")
