"""The pinned helm against the session cluster, and what the chart tests share: names,
the tenants Secret, CRD adoption, ServiceAccount kubeconfigs, pod readiness."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "inference-factory"
CRDS = ("fleetregions.inference.factory.dev", "inferencefactories.inference.factory.dev")
REGION = "eu-west-1"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
# Keys of the test tenants file (the router's own format, router/README.md).
ADMIN_KEY = "sk-admin-chart-tests"
TENANT, TENANT_KEY = "acme-eu", "sk-acme-eu-chart-tests"
# helm install/upgrade --wait: kwok marks the pods Ready without running containers.
WAIT = ("--wait", "--timeout", "180s")
Obj = dict[str, Any]


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenants_yaml() -> str:
    """A tenants file with one EU tenant and an admin key."""
    doc = {"admin_keys_sha256": [_sha(ADMIN_KEY)],
           "tenants": [{"name": TENANT, "jurisdictions": ["EU"],
                        "api_keys_sha256": [_sha(TENANT_KEY)]}]}  # fmt: skip
    return yaml.safe_dump(doc)


class Helm:
    """`helm` with the session cluster's kubeconfig and helm state of its own."""

    def __init__(self, binary: str, cluster: KubectlCluster, state: Path) -> None:
        self.binary = binary
        self.cluster = cluster
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig_path),
            "HELM_CACHE_HOME": str(state / "cache"),
            "HELM_CONFIG_HOME": str(state / "config"),
            "HELM_DATA_HOME": str(state / "data"),
        }

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """helm returning the whole result, for expected failures."""
        return subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def __call__(self, *args: str, timeout: float = 240) -> str:
        """helm returning stdout; fails the test with stderr when it fails."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def install(self, release: str, namespace: str, *args: str, chart: Path = CHART) -> str:
        return self("install", release, str(chart), "--namespace", namespace, *release_values(
            release), *WAIT, *args)  # fmt: skip


def release_values(release: str) -> tuple[str, ...]:
    """The required value and the release's own tenants Secret."""
    return ("--set", f"router.region={REGION}",
            "--set", f"router.tenants.existingSecret={release}-tenants")  # fmt: skip


def create_tenants_secret(cluster: KubectlCluster, release: str, namespace: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": f"{release}-tenants", "namespace": namespace},
              "stringData": {"tenants.yaml": tenants_yaml()}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))


def restrict(cluster: KubectlCluster, namespace: str) -> None:
    """Enforce (and warn about) the `restricted` Pod Security level in a namespace."""
    cluster.kubectl("label", "namespace", namespace, "--overwrite", RESTRICTED,
                    "pod-security.kubernetes.io/warn=restricted")  # fmt: skip


def adopt_crds(cluster: KubectlCluster, release: str, namespace: str) -> None:
    """Let a release take over the CRDs the session applied (or an earlier release kept):
    Helm's documented adoption metadata. Without it `helm install` refuses CRDs that exist."""
    for crd in CRDS:
        cluster.kubectl("label", "crd", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "crd", crd, "--overwrite",
                        f"meta.helm.sh/release-name={release}",
                        f"meta.helm.sh/release-namespace={namespace}")  # fmt: skip


def restore_crds(cluster: KubectlCluster) -> None:
    """The repository's CRDs again (after a test changed them through the chart)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pods(cluster: KubectlCluster, namespace: str, component: str) -> list[Obj]:
    """Ready pods of one chart component (operator or router) that are not terminating."""
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l",
                          f"app.kubernetes.io/component={component}", "-o", "json")  # fmt: skip
    pods: list[Obj] = json.loads(out)["items"]
    return [p for p in pods if _ready(p) and not p["metadata"].get("deletionTimestamp")]


def wait_ready(cluster: KubectlCluster, namespace: str, component: str, count: int) -> list[Obj]:
    """Exactly `count` Ready pods of a component (a rollout has finished)."""

    def exactly() -> list[Obj]:
        pods = ready_pods(cluster, namespace, component)
        return pods if len(pods) == count else []

    return wait_until(exactly, 120, interval=0.5,
                      what=f"{count} Ready {component} pod(s) in {namespace}")  # fmt: skip


def service_account_kubeconfig(cluster: KubectlCluster, namespace: str, sa: str,
                               path: Path) -> Path:  # fmt: skip
    """A kubeconfig that authenticates as a ServiceAccount with a token request, against the
    session cluster's server and CA."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").strip()
    admin = yaml.safe_load(cluster.kubeconfig_path.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [server],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": server["name"], "user": sa,
                                              "namespace": namespace}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path
