"""kubeconform's offline schemas: taken from the pinned wheel for the pinned minor only, with
references kubeconform resolves to the file beside the schema (never to kubernetes.io)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from factoryctl import kube_schemas
from factoryctl.errors import ToolchainError

PREFIX = "kubernetes_validate/kubernetes-json-schema"


def _wheel(tmp_path: Path, minors: list[str]) -> Path:
    path = tmp_path / "kubernetes_validate-0-py3-none-any.whl"
    service = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kubernetes.io/api/service/v1",
        "properties": {
            "spec": {"$ref": "/api/_definitions.json#/$defs/io.k8s.api.core.v1.ServiceSpec"},
            "metadata": {"allOf": [{"$ref": "/api/_definitions.json#/$defs/ObjectMeta"}]},
        },
    }
    with zipfile.ZipFile(path, "w") as archive:
        for minor in minors:
            for variant in ("local", "local-strict"):
                folder = f"{PREFIX}/v{minor}.0-{variant}"
                archive.writestr(f"{folder}/service-v1.json", json.dumps(service))
                archive.writestr(f"{folder}/_definitions.json", '{"$defs": {}}')
    return path


def test_extract_keeps_the_strict_schemas_of_the_minor_with_local_refs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    count = kube_schemas._extract(_wheel(tmp_path, ["1.33", "1.34"]), "1.34.4", out)
    assert count == 2
    assert sorted(p.name for p in out.iterdir()) == ["_definitions.json", "service-v1.json"]
    service = json.loads((out / "service-v1.json").read_text())
    assert "$id" not in service
    props = service["properties"]
    assert props["spec"]["$ref"] == "_definitions.json#/$defs/io.k8s.api.core.v1.ServiceSpec"
    assert props["metadata"]["allOf"][0]["$ref"] == "_definitions.json#/$defs/ObjectMeta"


def test_extract_refuses_a_wheel_without_the_minor(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match=r"no schemas for Kubernetes 1\.34"):
        kube_schemas._extract(_wheel(tmp_path, ["1.33"]), "1.34.4", tmp_path)


def test_find_schemas_needs_the_marker_of_the_pinned_wheel(tmp_path: Path) -> None:
    folder = kube_schemas.schemas_folder(tmp_path, "1.34.4")
    assert folder.name == f"kubernetes-schemas-v1.34-kv{kube_schemas.SCHEMAS_PACKAGE_VERSION}"
    assert kube_schemas.find_schemas(tmp_path, "1.34.4") is None
    folder.mkdir()
    (folder / ".complete").write_text("another-wheel\n")
    assert kube_schemas.find_schemas(tmp_path, "1.34.4") is None
    (folder / ".complete").write_text(kube_schemas.SCHEMAS_WHEEL_SHA256 + "\n")
    assert kube_schemas.find_schemas(tmp_path, "1.34.4") == folder
