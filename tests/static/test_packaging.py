"""Each component's extra of pyproject.toml is exactly what its package imports, the lock pins
every requirement, and each image installs its own component only.

An image installs `.[<component>]` (images/): if a package imported a library its extra does
not declare, the image would fail at start-up; if an extra declared a library its package does
not import, the image would carry it for nothing. Imports are read with `ast` (lazy ones inside
functions included), and mapped to distributions by the development venv's metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
LOCK = REPO / "requirements" / "lock.txt"
# package -> (its folder, its extra; None: the base install, which every component gets)
COMPONENTS = {
    "factory_contract": ("contract", None),
    "factory_operator": ("operator", "operator"),
    "factory_router": ("router", "router"),
    "factory_sim": ("sim", "sim"),
    "factoryctl": ("cli", "cli"),
}
FIRST_PARTY = set(COMPONENTS)
# Files that another interpreter runs: tiny_model.py runs under the cached vLLM environment's
# Python (torch, transformers, tokenizers), never the project's (see its docstring).
RUN_ELSEWHERE = {REPO / "cli" / "factoryctl" / "tiny_model.py"}
# Components whose image is built from images/<folder>/Containerfile.
IMAGES = ("operator", "router")


def _requirements(extra: str | None) -> list[Requirement]:
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in raw]


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements if r.name != PROJECT["name"]}


@cache
def _imported_modules(folder: Path) -> list[tuple[str, Path]]:
    """(top-level module, file) of every absolute import in the folder's Python files."""
    return list(_imports(folder))


def _imports(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*.py")):
        if path in RUN_ELSEWHERE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__":
                    yield top, path


@cache
def _provided() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions that provide it (slow: read once)."""
    return dict(metadata.packages_distributions())


def _imported_distributions(package: str) -> tuple[set[str], dict[str, list[str]]]:
    """(distributions the package imports, {module without a distribution: files})."""
    folder = REPO / COMPONENTS[package][0] / package
    provided = _provided()
    found: set[str] = set()
    unknown: dict[str, list[str]] = {}
    for module, path in _imported_modules(folder):
        if module in FIRST_PARTY:
            continue
        if module not in provided:
            unknown.setdefault(module, []).append(str(path.relative_to(REPO)))
            continue
        found.update(canonicalize_name(d) for d in provided[module])
    return found, unknown


@pytest.mark.parametrize("package", COMPONENTS)
def test_an_extra_declares_exactly_what_its_package_imports(package: str) -> None:
    extra = COMPONENTS[package][1]
    declared = _names(_requirements(extra))
    imported, unknown = _imported_distributions(package)
    assert not unknown, f"{package} imports modules no installed distribution provides: {unknown}"
    base = set() if extra is None else _names(_requirements(None))
    missing = imported - declared - base
    assert not missing, f"{package} imports {sorted(missing)}: add them to the extra {extra!r}"
    unused = declared - imported
    assert not unused, f"the extra {extra!r} declares {sorted(unused)}: {package} imports none"


@pytest.mark.parametrize("package", [p for p in COMPONENTS if p != "factory_contract"])
def test_a_component_imports_only_itself_and_the_contract(package: str) -> None:
    folder = REPO / COMPONENTS[package][0] / package
    others = {m for m, _ in _imported_modules(folder) if m in FIRST_PARTY} - {package}
    assert others <= {"factory_contract"}, others


def test_all_and_dev_install_every_component() -> None:
    extras = PROJECT["optional-dependencies"]
    components = sorted(e for _, e in COMPONENTS.values() if e)
    (everything,) = (Requirement(r) for r in extras["all"])
    assert everything.name == PROJECT["name"]
    assert sorted(everything.extras) == components
    assert f"{PROJECT['name']}[all]" in extras["dev"]


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize("extra", [None, "operator", "router", "sim", "cli", "dev"])
def test_the_lock_pins_every_requirement_within_its_range(extra: str | None) -> None:
    pins = _lock()
    for requirement in _requirements(extra):
        if requirement.name == PROJECT["name"] or not (
            requirement.marker is None or requirement.marker.evaluate()
        ):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} has no pin in requirements/lock.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement}: lock.txt pins {pins[name]}"
        )


@pytest.mark.parametrize("component", IMAGES)
def test_an_image_installs_its_own_component_only(component: str) -> None:
    text = (REPO / "images" / component / "Containerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+)/ \1/$", text, re.MULTILINE))
    assert copied == {"contract", component}, copied
    assert f'--constraint requirements/lock.txt ".[{component}]"' in text
    package = next(p for p, (folder, _) in COMPONENTS.items() if folder == component)
    scripts = PROJECT["scripts"]
    (own,) = (name for name, target in scripts.items() if target.startswith(f"{package}."))
    removed = re.search(r"^ && rm (.+)$", text, re.MULTILINE)
    assert removed, "the other components' commands are removed"
    assert set(removed[1].replace("/opt/venv/bin/", "").split()) == set(scripts) - {own}
    assert f'ENTRYPOINT ["{own}"]' in text
