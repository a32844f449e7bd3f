"""Fixtures for tests against the real, pinned vLLM (CPU build) and the tiny model.

The suite's set-up (`scripts/test.sh`, phase `vllm`) installs the environment with
`factoryctl dev vllm`; a test that finds it missing fails (never skips), saying how to make it.
"""

from __future__ import annotations

import pytest

from factoryctl.vllm_env import VllmEnv, find_vllm


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: needs the pinned real vLLM environment")


@pytest.fixture(scope="session")
def vllm_env() -> VllmEnv:
    """The installed vLLM environment; fails the test when it is missing."""
    env = find_vllm()
    if env is None:
        pytest.fail("the pinned vLLM environment is missing: run `.venv/bin/factoryctl dev vllm`")
    return env
