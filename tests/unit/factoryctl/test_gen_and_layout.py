"""`factoryctl gen` runs tools/gen.py with this Python; the fleet's components are what
cli/README.md lists, in order; the components import the shared types, never the fleet."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from factoryctl import fleet, gen
from factoryctl.errors import FactoryctlError

CLI = Path(__file__).resolve().parents[3] / "cli"


def test_gen_runs_the_one_implementation_with_this_python() -> None:
    assert CLI.parent / "tools" / "gen.py" == gen.GEN_SCRIPT
    assert gen.GEN_SCRIPT.exists()
    assert gen.gen_command([], check=False, helm=None) == [sys.executable, str(gen.GEN_SCRIPT)]
    assert gen.gen_command(["crds", "chart"], check=True, helm=Path("/opt/helm")) == [
        sys.executable,
        str(gen.GEN_SCRIPT),
        "crds",
        "chart",
        "--check",
        "--helm",
        "/opt/helm",
    ]


def test_gen_outside_a_checkout_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gen, "GEN_SCRIPT", tmp_path / "tools" / "gen.py")
    with pytest.raises(FactoryctlError, match="not found") as caught:
        gen.run_gen([], check=True, helm=None)
    assert "checkout" in caught.value.hint


def test_the_readme_lists_the_components_in_fleet_order() -> None:
    section = (CLI / "README.md").read_text().split("## The fleet's components", 1)[1]
    listed = re.findall(r"`([a-z-]+)`(?: \(| and|,)", section.split("## ", 1)[0])
    names = [c.name for c in fleet.all_components()]
    assert [n for n in listed if n in names] == names


def test_components_import_the_shared_types_not_the_fleet() -> None:
    for path in sorted((CLI / "factoryctl" / "components").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "factoryctl.fleet" not in modules, path.name
