"""The README's first command and its examples, run as written (taken from README.md itself)
in a fleet home of their own, so the README cannot drift from the truth.

Blocks are found by a marker comment on the line above their fence:

    <!-- readme-test: fleet-up -->   the first command (`make up`)
    <!-- readme-test: curl -->       a copy-paste `curl` to the router
    <!-- readme-test: openai -->     the same with the `openai` client
    <!-- readme-test: openai-real -->   the `openai` client to the real-engine pool

`sh`/`bash`/`console`-less fences run with bash -euo pipefail from the repository root;
`python` fences with the project's interpreter. Only FACTORY_HOME differs from the user's
environment: the fleet gets a home (names, ports, state) of its own and never touches a
developer's fleet; it is stopped with `factoryctl dev down` afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKED_BLOCK = re.compile(
    r"^<!-- readme-test: (?P<name>[\w-]+) -->\n```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
SHELLS = {"", "sh", "bash", "shell"}
# Cold start of the whole fleet on 2 cores (toolchain already built); see tests/e2e/conftest.
UP_TIMEOUT = 1800
EXAMPLE_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    name: str
    lang: str
    body: str


def readme_blocks(text: str) -> dict[str, Block]:
    """The marked fenced blocks of a README, by marker name."""
    blocks: dict[str, Block] = {}
    for match in MARKED_BLOCK.finditer(text):
        name = match["name"]
        if name in blocks:
            raise ValueError(f"README: two blocks marked readme-test: {name}")
        blocks[name] = Block(name, match["lang"], match["body"])
    return blocks


def run_block(block: Block, home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a block as a user would paste it, from the repository root, in its own home."""
    if block.lang in SHELLS:
        cmd = ["bash", "-euo", "pipefail", "-c", block.body]
    elif block.lang == "python":
        cmd = [sys.executable, "-c", block.body]
    else:
        raise ValueError(f"README block {block.name}: cannot run a `{block.lang}` fence")
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "FACTORY_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def _required(name: str) -> Block:
    block = readme_blocks(README.read_text()).get(name)
    if block is None:
        pytest.fail(
            f"README.md has no fenced block under `<!-- readme-test: {name} -->`: the "
            f"README must show it (issue 6), and this test runs it as written"
        )
    return block


def test_readme_blocks_are_found() -> None:
    text = "x\n<!-- readme-test: a -->\n```sh\nmake up\n```\n<!-- readme-test: b -->\n```python\n"
    text += "print(1)\n```\n```sh\nnot marked\n```\n"
    assert readme_blocks(text) == {"a": Block("a", "sh", "make up\n"),
                                   "b": Block("b", "python", "print(1)\n")}  # fmt: skip


@dataclass(frozen=True)
class UpFleet:
    home: Path
    up: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def readme_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpFleet]:
    """The README's first command, run once for this module; the fleet stopped afterwards."""
    block = _required("fleet-up")
    home = tmp_path_factory.mktemp("readme-fleet")
    try:
        yield UpFleet(home, run_block(block, home, UP_TIMEOUT))
    finally:
        subprocess.run([sys.executable, "-m", "factoryctl.main", "dev", "down"], cwd=ROOT,
                       env={**os.environ, "FACTORY_HOME": str(home)}, timeout=300,
                       check=False)  # fmt: skip


def test_readme_first_command_brings_up_the_fleet(readme_fleet: UpFleet) -> None:
    up = readme_fleet.up
    assert up.returncode == 0, f"stdout:\n{up.stdout[-3000:]}\nstderr:\n{up.stderr[-5000:]}"
    # The README promises the kubeconfig export at the end.
    assert "export KUBECONFIG=" in up.stdout + up.stderr
    done = subprocess.run([sys.executable, "-m", "factoryctl.main", "dev", "status", "--json"],
                          env={**os.environ, "FACTORY_HOME": str(readme_fleet.home)},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout), "factoryctl dev status reports nothing"


@pytest.mark.parametrize("name", ["curl", "openai"])
def test_readme_examples_work_against_the_fleet(readme_fleet: UpFleet, name: str) -> None:
    """The README's examples (and `make up` prints its own copy of them at the end)."""
    block = _required(name)
    up = readme_fleet.up
    assert up.returncode == 0, "the README's first command failed (see the fleet-up test)"
    assert name in up.stdout + up.stderr, f"`make up` did not print a {name} example"
    done = run_block(block, readme_fleet.home, EXAMPLE_TIMEOUT)
    assert done.returncode == 0, (
        f"README `{name}` example failed:\n{block.body}\nstdout:\n{done.stdout[-3000:]}\n"
        f"stderr:\n{done.stderr[-3000:]}"
    )
    assert done.stdout.strip(), f"README `{name}` example printed nothing"


def test_readme_real_engine_example_is_served_by_real_vllm(readme_fleet: UpFleet) -> None:
    """`make up` brings up a real-engine pool, and the README's example reaches it."""
    assert readme_fleet.up.returncode == 0, "the README's first command failed"
    block = _required("openai-real")
    done = run_block(block, readme_fleet.home, EXAMPLE_TIMEOUT)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    # The router's answer names the pool, and the real engine counted the request itself.
    assert "served by pool tiny-llama-l4-vllm" in done.stdout, done.stdout
    state = json.loads((readme_fleet.home / "state.json").read_text())
    assert state["real_engine"]["on"], state["real_engine"]
