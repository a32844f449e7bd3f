"""The import-linter contracts of .importlinter fail on the violations they are there for:
the contract package importing a component, and a component importing another's internals.

Each case writes a tiny tree of the project's root packages to a temporary directory, with
one import of its own, and runs the real ``lint-imports`` on the real configuration there
(first on sys.path, so the tree stands in for the installed packages)."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("factory_contract", "factory_operator", "factory_router", "factory_sim", "factoryctl")
CONTRACTS = ("components", "contract-leaf")


def _contract_name(key: str) -> str:
    config = configparser.ConfigParser()
    config.read(CONFIG)
    return config[f"importlinter:contract:{key}"]["name"]


def _lint(tree: Path, modules: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for package in PACKAGES:
        (tree / package).mkdir()
        (tree / package / "__init__.py").write_text("")
    for name, source in modules.items():
        path = tree / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source)
    selected = [arg for key in CONTRACTS for arg in ("--contract", key)]
    return subprocess.run(
        [str(LINT_IMPORTS), str(CONFIG), "--no-cache", *selected],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_components_may_import_the_contract(tmp_path: Path) -> None:
    done = _lint(
        tmp_path,
        {
            "factory_contract.names": "GROUP = 'g'\n",
            "factory_router.discovery.kube": "from factory_contract import names\n",
            "factory_operator.plan.workload": "from factory_contract.names import GROUP\n",
            "factoryctl.agents.engines": "import factory_contract.names\n",
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 dependencies" in done.stdout and "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("modules", "broken"),
    [
        pytest.param(
            {
                "factory_contract.status": "from factory_router.policy import fleet\n",
                "factory_router.policy.fleet": "",
            },
            "contract-leaf",
            id="contract-imports-the-router",
        ),
        pytest.param(
            {
                "factory_contract.names": "import factoryctl.agents.engines\n",
                "factoryctl.agents.engines": "",
            },
            "contract-leaf",
            id="contract-imports-the-local-fleet",
        ),
        pytest.param(
            {
                "factory_router.discovery.kube": "from factory_operator.plan import workload\n",
                "factory_operator.plan.workload": "",
            },
            "components",
            id="router-imports-operator-internals",
        ),
        pytest.param(
            {
                "factoryctl.agents.engines": "from factory_sim.engine import config\n",
                "factory_sim.engine.config": "",
            },
            "components",
            id="local-fleet-imports-simulator-internals",
        ),
    ],
)
def test_a_violation_breaks_a_contract(
    tmp_path: Path, modules: dict[str, str], broken: str
) -> None:
    done = _lint(tmp_path, modules)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 kept, 1 broken" in done.stdout
    report = " ".join(done.stdout.split())  # import-linter wraps long names
    assert f"{_contract_name(broken)} BROKEN" in report
