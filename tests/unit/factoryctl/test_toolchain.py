"""The toolchain's pins, wrapper module and version probes."""

from __future__ import annotations

from pathlib import Path

from factoryctl import toolchain


def test_wrapper_pins_every_staging_module_at_the_matching_version() -> None:
    gomod = toolchain.kubernetes_wrapper_gomod()
    assert f"require k8s.io/kubernetes v{toolchain.KUBERNETES_VERSION}" in gomod
    assert "godebug default=go1.24" in gomod
    staging = "v0." + toolchain.KUBERNETES_VERSION.split(".", 1)[1]
    for module in ("api", "client-go", "kubectl", "pod-security-admission", "externaljwt"):
        assert f"k8s.io/{module} => k8s.io/{module} {staging}" in gomod


def _fake(tmp_path: Path, name: str, output: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_version_probe_accepts_only_the_exact_pin(tmp_path: Path) -> None:
    good = _fake(tmp_path, "kube-apiserver", f"Kubernetes v{toolchain.KUBERNETES_VERSION}")
    assert toolchain.matches_pin("kube-apiserver", good)
    longer = _fake(tmp_path, "etcd", f"etcd Version: {toolchain.ETCD_VERSION}0")
    assert not toolchain.matches_pin("etcd", longer)
    assert not toolchain.matches_pin("helm", tmp_path / "missing")


def test_find_tools_in_an_empty_cache_finds_nothing(tmp_path: Path) -> None:
    # Nothing in the cache, and PATH holds no binary of the pinned versions.
    assert toolchain.find_tools(tmp_path) is None
