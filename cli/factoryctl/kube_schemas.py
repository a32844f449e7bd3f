"""The Kubernetes JSON schemas that kubeconform validates against, installed into the cache.

Tests never fetch a schema: they read this folder, which `factoryctl dev tools` fills once
from a PyPI package that bundles the schemas (kubernetes-validate, pinned by version and by
its wheel's SHA-256), for the Kubernetes minor the toolchain pins:

    <cache>/kubernetes-schemas-v1.34-kv1.37.0/{_definitions.json, deployment-apps-v1.json, ...}

Only the strict variant is kept (`additionalProperties: false`: an unknown field is a
finding, as kubeconform's `-strict` means). Each schema has an `$id` under kubernetes.io and
refers to the shared definitions as `/api/_definitions.json`, resolved against that `$id`:
kubeconform would fetch it over HTTPS. So the `$id` is dropped and the reference made
relative (`_definitions.json#/...`), which resolves to the file beside the schema.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factoryctl.errors import ToolchainError

SCHEMAS_PACKAGE = "kubernetes-validate"
SCHEMAS_PACKAGE_VERSION = "1.37.0"
SCHEMAS_WHEEL_SHA256 = "85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9"
# The file whose presence says the folder is complete (written last).
_MARKER = ".complete"
_ABSOLUTE_REF = "/api/_definitions.json#"
_RELATIVE_REF = "_definitions.json#"
PIP_TIMEOUT_SECONDS = 600


def schemas_folder(cache: Path, kubernetes_version: str) -> Path:
    """Where the schemas of `kubernetes_version`'s minor live in the cache."""
    minor = ".".join(kubernetes_version.split(".")[:2])
    return cache / f"kubernetes-schemas-v{minor}-kv{SCHEMAS_PACKAGE_VERSION}"


def find_schemas(cache: Path, kubernetes_version: str) -> Path | None:
    """The installed schema folder, or None when it is absent or incomplete."""
    folder = schemas_folder(cache, kubernetes_version)
    marker = folder / _MARKER
    if marker.is_file() and marker.read_text().strip() == SCHEMAS_WHEEL_SHA256:
        return folder
    return None


def _download_wheel(into: Path) -> Path:
    spec = f"{SCHEMAS_PACKAGE}=={SCHEMAS_PACKAGE_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--only-binary=:all:", "--dest", str(into), spec]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"pip download {spec} took over {PIP_TIMEOUT_SECONDS}s") from exc
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise ToolchainError(
            f"pip download {spec} failed (exit {done.returncode}):\n{done.stderr[-2000:]}",
            hint="check that PyPI is reachable, then rerun `factoryctl dev tools`",
        )
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != SCHEMAS_WHEEL_SHA256:
        raise ToolchainError(
            f"{wheels[0].name} has SHA-256 {digest}, not the pinned {SCHEMAS_WHEEL_SHA256}"
        )
    return wheels[0]


def _local_refs(node: Any) -> Any:
    """`node` with every `$ref` to the shared definitions made relative to the file."""
    if isinstance(node, dict):
        return {
            key: value.replace(_ABSOLUTE_REF, _RELATIVE_REF, 1)
            if key == "$ref" and isinstance(value, str)
            else _local_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(item) for item in node]
    return node


def _extract(wheel: Path, kubernetes_version: str, into: Path) -> int:
    """Write the strict schemas of the pinned minor into `into`, refs made relative."""
    major, minor = kubernetes_version.split(".")[:2]
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{major}.{minor}.0-local-strict/"
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(prefix) or not name.endswith(".json"):
                continue
            schema = json.loads(archive.read(name))
            schema.pop("$id", None)
            (into / name[len(prefix) :]).write_text(json.dumps(_local_refs(schema)))
            count += 1
    if count == 0:
        raise ToolchainError(
            f"{wheel.name} has no schemas for Kubernetes {major}.{minor}",
            hint="pin a kubernetes-validate release that bundles this minor",
        )
    return count


def ensure_schemas(progress: Callable[[str], None], cache: Path, kubernetes_version: str) -> Path:
    """The schema folder, installed from the pinned wheel when it is not there yet."""
    if found := find_schemas(cache, kubernetes_version):
        progress(f"{found.name}: ready")
        return found
    folder = schemas_folder(cache, kubernetes_version)
    progress(f"installing {folder.name} from {SCHEMAS_PACKAGE} {SCHEMAS_PACKAGE_VERSION} (PyPI)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        staging = Path(tmp) / "schemas"
        staging.mkdir()
        count = _extract(_download_wheel(Path(tmp)), kubernetes_version, staging)
        (staging / _MARKER).write_text(SCHEMAS_WHEEL_SHA256 + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            staging.rename(folder)
        except OSError:
            # Another `factoryctl dev tools` (a fleet coming up beside the test suite)
            # installed the same pinned wheel first: take its folder if it is complete.
            if found := find_schemas(cache, kubernetes_version):
                return found
            raise
    progress(f"{folder.name}: {count} schemas")
    return folder
