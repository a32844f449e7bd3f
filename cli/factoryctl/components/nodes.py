"""Component `nodes`: the topology's fake accelerator nodes, managed by kwok.

Nodes are applied server-side (created or updated, never duplicated); nodes of an earlier
topology that are no longer in the file are deleted.
"""

from __future__ import annotations

import json
from typing import Any

from factoryctl.component import ComponentStatus, FleetContext, State, wait_until
from factoryctl.topology import node_manifests

LOCAL_FLEET_LABEL = "inference.factory.dev/local-fleet"


class NodesComponent:
    """Applies the Nodes of the topology file and waits until kwok reports them Ready."""

    name = "nodes"

    def _desired(self, ctx: FleetContext) -> list[dict[str, Any]]:
        nodes = node_manifests(ctx.topology)
        for node in nodes:
            node["metadata"]["labels"][LOCAL_FLEET_LABEL] = "true"
        return nodes

    def _observed(self, ctx: FleetContext) -> dict[str, bool]:
        done = ctx.kubectl().run("get", "nodes", "-l", LOCAL_FLEET_LABEL, "-o", "json")
        ready = {}
        for item in json.loads(done.stdout)["items"]:
            conditions = item.get("status", {}).get("conditions", [])
            ready[item["metadata"]["name"]] = any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            )
        return ready

    def up(self, ctx: FleetContext) -> None:
        kubectl = ctx.kubectl()
        desired = self._desired(ctx)
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": desired})
        kubectl.run(
            "apply", "--server-side", "--field-manager=factoryctl", "-f", "-", input_text=manifest
        )
        names = {str(n["metadata"]["name"]) for n in desired}
        stale = sorted(set(self._observed(ctx)) - names)
        if stale:
            kubectl.run("delete", "node", *stale, "--wait=false")
        ctx.progress(f"[nodes] {len(names)} nodes in {len(ctx.topology.regions)} regions")
        wait_until(
            lambda: all(self._observed(ctx).get(name) for name in names),
            120,
            "kwok to report every node Ready",
        )

    def down(self, ctx: FleetContext) -> None:
        """Nodes go with the cluster."""

    def status(self, ctx: FleetContext) -> ComponentStatus:
        if ctx.tools_if_present() is None or not ctx.home.kubeconfig.exists():
            return ComponentStatus(self.name, "stopped", "no cluster")
        try:
            observed = self._observed(ctx)
        except Exception as exc:
            return ComponentStatus(self.name, "degraded", f"cannot list nodes: {exc}")
        ready = sum(observed.values())
        state: State = "running" if observed and ready == len(observed) else "degraded"
        return ComponentStatus(
            self.name, state, f"{ready}/{len(observed)} nodes Ready", data={"nodes": observed}
        )
