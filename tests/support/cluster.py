"""The `cluster` fixture's backends, shaped like pytest-kind's `kind_cluster`.

Every backend offers `name`, `kubeconfig_path` and `kubectl(*args) -> str`:
- `local` (default): the project's own local control plane (kwokctl, binary runtime) in a
  fleet home of the test session's own, so it never touches a developer's running fleet;
- `kind`: pytest-kind's cluster where Docker runs (not exercised here: no Docker engine);
- `existing`: whatever cluster `$KUBECONFIG` points at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def session_home(name: str) -> Path:
    """A fleet home for this session, outside pytest's own temporary folders: pytest prunes
    those of older sessions when a new one starts, which would pull the kubeconfig from under
    a cluster that is still running. Removed when its fleet is torn down."""
    return Path(tempfile.mkdtemp(prefix=f"factory-test-{name}-"))


def _factoryctl() -> list[str]:
    return [sys.executable, "-m", "factoryctl.main"]


class KubectlCluster:
    """A cluster reached with a kubeconfig and the pinned kubectl."""

    def __init__(self, name: str, kubeconfig_path: Path, kubectl_binary: str) -> None:
        self.name = name
        self.kubeconfig_path = kubeconfig_path
        self.kubectl_binary = kubectl_binary

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> str:
        """Run kubectl and return its stdout; fail with stderr when it fails and check is set."""
        done = subprocess.run(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig_path}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """kubectl returning the whole result, for tests that expect failures."""
        return subprocess.run(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig_path}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        """Nothing to stop for clusters the session did not start."""


class LocalCluster(KubectlCluster):
    """The local control plane, started in its own fleet home for this test session."""

    def __init__(self, home: Path, components: str = "toolchain,cluster,nodes") -> None:
        self.home = home
        env = {**os.environ, "FACTORY_HOME": str(home)}
        subprocess.run(
            [*_factoryctl(), "dev", "up", "--only", components], check=True, env=env, timeout=900
        )
        from factoryctl.home import FleetHome  # noqa: PLC0415
        from factoryctl.toolchain import find_tools  # noqa: PLC0415

        tools = find_tools()
        if tools is None:
            raise RuntimeError("the toolchain vanished after `factoryctl dev up`")
        fleet_home = FleetHome(home)
        super().__init__(fleet_home.cluster_name, fleet_home.kubeconfig, str(tools.kubectl))
        self.tools = tools
        self.fleet_home = fleet_home

    def stop(self) -> None:
        subprocess.run(
            [*_factoryctl(), "dev", "down"],
            check=True,
            timeout=300,
            env={**os.environ, "FACTORY_HOME": str(self.home)},
        )


def existing_cluster() -> KubectlCluster:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise RuntimeError("--cluster-backend=existing needs $KUBECONFIG")
    return KubectlCluster("existing", Path(kubeconfig), os.environ.get("KUBECTL", "kubectl"))


def kind_cluster(request: object) -> KubectlCluster:
    """Delegate to pytest-kind (install the `kind` extra; needs a Docker engine)."""
    from pytest_kind import KindCluster  # type: ignore[import-not-found]  # noqa: PLC0415

    kind = KindCluster("inference-factory-tests")
    kind.create()
    cluster = KubectlCluster(kind.name, Path(kind.kubeconfig_path), str(kind.kubectl_path))
    cluster.stop = kind.delete  # type: ignore[method-assign]
    return cluster


def install_fleet_api(cluster: KubectlCluster) -> None:
    """Apply the CRDs and the example FleetRegions (without their remote endpoints and
    Prometheus, which the local fleet does not have)."""
    import json  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    crds = ("fleetregions.inference.factory.dev", "inferencefactories.inference.factory.dev")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{crd}" for crd in crds))  # fmt: skip
    examples = (REPO / "deploy" / "examples" / "fleetregions.yaml").read_text()
    regions = [d for d in yaml.safe_load_all(examples) if d]
    for region in regions:
        region["spec"].pop("endpoint", None)
        region["spec"].pop("prometheus", None)
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": regions}),
    )
