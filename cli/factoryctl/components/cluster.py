"""Component `cluster`: a kwokctl cluster on the binary runtime, bound to 127.0.0.1.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok-controller run as
local processes from the pinned toolchain. The API server writes an audit log of every
write request (`<home>/kwok/clusters/<name>/audit.log`), which tests use to count the
writes of the operator.

The kwok Stages come from `factoryctl.components.stages`: when the fleet runs the engines
component, an engine pod is Ready only once its simulated engine answers (as a readiness
probe would make it), so that a rollout waits for engines that serve. A cluster brought up
without engines (`--only cluster,nodes`, the operator's integration tests) makes every pod
Ready at once. The choice is made when the cluster is created.
"""

from __future__ import annotations

import os
import subprocess

import yaml

from factoryctl.component import ComponentStatus, FleetContext, wait_until
from factoryctl.components.stages import kwok_stages
from factoryctl.errors import ComponentError
from factoryctl.toolchain import ETCD_VERSION, KUBERNETES_VERSION

SERVICE_CIDR = "10.96.0.0/16"

# Writes only, at Metadata level: enough to count who wrote what, cheap to keep.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


class ClusterComponent:
    """Creates, starts, stops and deletes the kwokctl cluster of this fleet home."""

    name = "cluster"

    def _env(self, ctx: FleetContext) -> dict[str, str]:
        # kwokctl also writes (and on delete, removes) a context in the kubeconfig that
        # $KUBECONFIG names, or ~/.kube/config: give it a file of this home's own, so a fleet
        # never edits the user's kubeconfig or another fleet's.
        return {
            **os.environ,
            "KWOK_WORKDIR": str(ctx.home.kwok_workdir),
            "KUBECONFIG": str(ctx.home.kwok_workdir / "kwokctl-contexts.yaml"),
        }

    def _kwokctl(self, ctx: FleetContext, *args: str, timeout: float = 300) -> str:
        cmd = [str(ctx.tools.kwokctl), *args, "--name", ctx.home.cluster_name]
        try:
            done = subprocess.run(
                cmd,
                env=self._env(ctx),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ComponentError(f"kwokctl {args[0]} timed out after {timeout}s") from exc
        if done.returncode != 0:
            raise ComponentError(
                f"kwokctl {' '.join(args)} failed: {done.stderr.strip()[-2000:]}",
                hint=f"logs: {ctx.home.kwok_workdir}/clusters/{ctx.home.cluster_name}/logs",
            )
        return done.stdout

    def _config(self, ctx: FleetContext) -> str:
        tools = ctx.tools
        cluster_dir = ctx.home.root / "cluster-config"
        cluster_dir.mkdir(parents=True, exist_ok=True)
        audit_policy = cluster_dir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        config = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "runtime": "binary",
                "bindAddress": "127.0.0.1",
                "kubeApiserverPort": ctx.home.port("kube-apiserver"),
                "kubeVersion": f"v{KUBERNETES_VERSION}",
                "etcdVersion": ETCD_VERSION,
                "kubeApiserverBinary": str(tools.kube_apiserver),
                "kubeControllerManagerBinary": str(tools.kube_controller_manager),
                "kubeSchedulerBinary": str(tools.kube_scheduler),
                "kubectlBinary": str(tools.kubectl),
                "etcdBinary": str(tools.etcd),
                "kwokControllerBinary": str(tools.kwok),
                "kubeAuditPolicy": str(audit_policy),
                "disableQPSLimits": True,
                "kubeAuthorization": True,
                "kubeAdmission": True,
            },
            # kube-apiserver's default Service range is a /24 (254 Services): too small for a
            # fleet of hundreds of pools, each with its Service.
            "componentsPatches": [
                {
                    "name": "kube-apiserver",
                    "extraArgs": [{"key": "service-cluster-ip-range", "value": SERVICE_CIDR}],
                }
            ],
        }
        gate = ctx.selected is None or "engines" in ctx.selected
        path = cluster_dir / "kwokctl.yaml"
        path.write_text(yaml.safe_dump_all([config, *kwok_stages(engine_gate=gate)]))
        return str(path)

    def _healthy(self, ctx: FleetContext) -> bool:
        if not ctx.home.kubeconfig.exists():
            return False
        done = ctx.kubectl().run("get", "--raw", "/readyz", check=False, timeout=10)
        return done.returncode == 0 and done.stdout.strip() == "ok"

    def up(self, ctx: FleetContext) -> None:
        ctx.home.ensure()
        if self._healthy(ctx):
            ctx.progress("[cluster] already running")
            return
        if ctx.home.kubeconfig.exists():
            ctx.progress("[cluster] starting the existing cluster")
            self._kwokctl(ctx, "start", "cluster")
        else:
            ctx.progress(
                "[cluster] creating (etcd, kube-apiserver, controller-manager, "
                "scheduler, kwok-controller)"
            )
            self._kwokctl(ctx, "create", "cluster", "--config", self._config(ctx), "--wait", "3m")
        wait_until(lambda: self._healthy(ctx), 120, "the API server to be ready")

    def down(self, ctx: FleetContext) -> None:
        if not ctx.home.kwok_workdir.joinpath("clusters", ctx.home.cluster_name).exists():
            return
        tools = ctx.tools_if_present()
        if tools is None:
            raise ComponentError(
                "cannot stop the cluster: the kwokctl binary is missing",
                hint="run `factoryctl dev tools`, then `factoryctl dev down`",
            )
        self._kwokctl(ctx, "delete", "cluster")

    def status(self, ctx: FleetContext) -> ComponentStatus:
        if ctx.tools_if_present() is None or not ctx.home.kubeconfig.exists():
            return ComponentStatus(self.name, "stopped", "no cluster")
        if not self._healthy(ctx):
            return ComponentStatus(
                self.name,
                "degraded",
                "API server not ready",
                data={"kubeconfig": str(ctx.home.kubeconfig)},
            )
        return ComponentStatus(
            self.name,
            "running",
            f"Kubernetes v{KUBERNETES_VERSION} ({ctx.home.cluster_name})",
            data={"kubeconfig": str(ctx.home.kubeconfig)},
        )
