"""kwok Stages of the local cluster: how fake nodes and pods move through their lives.

kwokctl replaces all of its default Stages as soon as a configuration names one, so this
module gives the whole set (`kwok.x-k8s.io/v1alpha1`, passed in kwokctl's `--config`):

- `node-initialize` / `node-heartbeat`: a node becomes Ready with the capacity it was
  created with (a merge patch never touches `capacity`/`allocatable`), and its conditions
  are refreshed now and then (kwok-controller renews the node Leases itself);
- `pod-ready`: any pod that is not an engine pod runs and is Ready at once;
- with the engine gate (the fleet runs the engines agent):
  `engine-pod-running`: an engine pod (label `app.kubernetes.io/managed-by=inference-factory`)
  runs but is not Ready, as a vLLM container is while it loads its model;
  `engine-pod-ready`: it becomes Ready once the engines agent has seen its engine answer
  `/health` and set `inference.factory.dev/engine-ready: "true"` (the readiness probe);
  `engine-pod-unready`: it turns not Ready again when the agent sets `"false"` (a real
  engine that exited: the readiness probe fails until it is started again);
  without the gate (a bare cluster for the operator's tests, which run no engines), engine
  pods are Ready at once like any other;
- `pod-complete`: a Job's pod succeeds; `pod-delete`: a deleted pod goes at once.

Each `statusTemplate` is a Go template that renders a strategic merge patch of the
object's status, with kwok's template functions (`Now`, `Quote`, `NodeConditions`, `NodeIP`,
`NodeIPsWith`, `PodIPsWith`).
"""

from __future__ import annotations

from typing import Any

from factory_contract import names
from factoryctl.toolchain import KUBERNETES_VERSION

# The contract's keys, under the operator's default prefix, as the engines agent sets them.
ENGINE_READY_ANNOTATION = names.prefixed(names.ENGINE_READY_ANNOTATION)
ENGINE_POD_LABEL = (names.MANAGED_BY_LABEL, names.MANAGED_BY)

Stage = dict[str, Any]
Expression = dict[str, Any]

_NOT_DELETING: Expression = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_ENGINE_POD = f'.metadata.labels["{ENGINE_POD_LABEL[0]}"]'


def _phase(*phases: str) -> Expression:
    return {"key": ".status.phase", "operator": "In", "values": list(phases)}


def _stage(
    name: str,
    kind: str,
    expressions: list[Expression],
    nxt: dict[str, Any],
    delay: tuple[int, int] | None = None,
) -> Stage:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": nxt,
    }
    if delay is not None:
        spec["delay"] = {"durationMilliseconds": delay[0], "jitterDurationMilliseconds": delay[1]}
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


_NODE_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ or $.metadata.creationTimestamp $now | Quote }}
{{ end }}
addresses:
{{ with NodeIP }}
- type: InternalIP
  address: {{ . | Quote }}
{{ end }}
- type: Hostname
  address: {{ .metadata.name | Quote }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: "vKUBE_VERSION"
  kubeProxyVersion: "vKUBE_VERSION"
  containerRuntimeVersion: "kwok"
  kernelVersion: "kwok"
  osImage: "kwok"
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
""".replace("KUBE_VERSION", KUBERNETES_VERSION)


def _pod_status(ready: bool) -> str:
    """A running pod's status; Ready (with its readiness gates) only if `ready`."""
    flag = "true" if ready else "false"
    status = '"True"' if ready else '"False"'
    reason = "" if ready else "\n  reason: ContainersNotReady"
    gates = (
        '{{ range .spec.readinessGates }}\n- type: {{ .conditionType | Quote }}\n  status: "True"\n'
        "  lastTransitionTime: {{ $now | Quote }}\n{{ end }}\n"
        if ready
        else ""
    )
    return f"""\
{{{{ $now := Now }}}}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: ContainersReady
  status: {status}{reason}
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: Ready
  status: {status}{reason}
  lastTransitionTime: {{{{ $now | Quote }}}}
{gates}containerStatuses:
{{{{ range .spec.containers }}}}
- name: {{{{ .name | Quote }}}}
  image: {{{{ .image | Quote }}}}
  ready: {flag}
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
initContainerStatuses:
{{{{ range .spec.initContainers }}}}
- name: {{{{ .name | Quote }}}}
  image: {{{{ .image | Quote }}}}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{{{ $now | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
{{{{ with NodeIPsWith .spec.nodeName }}}}
hostIP: {{{{ index . 0 | Quote }}}}
hostIPs:
{{{{ range . }}}}
- ip: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ end }}}}
{{{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}}}
podIP: {{{{ index . 0 | Quote }}}}
podIPs:
{{{{ range . }}}}
- ip: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ end }}}}
phase: Running
startTime: {{{{ $now | Quote }}}}
"""


# Only the readiness of a pod that already runs (IPs and start time stay as they are).
_ENGINE_READY_STATUS = """\
{{ $now := Now }}
conditions:
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""

_COMPLETE_STATUS = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def kwok_stages(engine_gate: bool) -> list[Stage]:
    """Every Stage of the local cluster; `engine_gate`: engine pods wait for their engine."""
    ready: Expression = {"key": _READY, "operator": "In", "values": ["True"]}
    not_ready: Expression = {**ready, "operator": "NotIn"}
    engine_pod: Expression = {"key": _ENGINE_POD, "operator": "In", "values": [ENGINE_POD_LABEL[1]]}
    other_pod: Expression = {**engine_pod, "operator": "NotIn"}
    answered: Expression = {
        "key": f'.metadata.annotations["{ENGINE_READY_ANNOTATION}"]',
        "operator": "In",
        "values": ["true"],
    }
    failed: Expression = {**answered, "values": ["false"]}
    job_pod: Expression = {
        "key": ".metadata.ownerReferences.[].kind",
        "operator": "In",
        "values": ["Job"],
    }
    deleting: Expression = {**_NOT_DELETING, "operator": "Exists"}
    pending = [_NOT_DELETING, _phase("Pending"), not_ready]
    running = [_NOT_DELETING, _phase("Running")]
    node_status = {"statusTemplate": _NODE_STATUS}
    stages = [
        _stage("node-initialize", "Node", [not_ready], node_status),
        # Lease renewals keep nodes alive; conditions are refreshed about once a minute.
        _stage("node-heartbeat", "Node", [_phase("Running"), ready], node_status, (60_000, 70_000)),
        _stage(
            "pod-ready",
            "Pod",
            [*pending, other_pod] if engine_gate else pending,
            {"statusTemplate": _pod_status(ready=True)},
        ),
    ]
    if engine_gate:
        stages += [
            _stage(
                "engine-pod-running",
                "Pod",
                [*pending, engine_pod],
                {"statusTemplate": _pod_status(ready=False)},
            ),
            _stage(
                "engine-pod-ready",
                "Pod",
                [*running, not_ready, engine_pod, answered],
                {"statusTemplate": _ENGINE_READY_STATUS},
            ),
            _stage(
                "engine-pod-unready",
                "Pod",
                [*running, ready, engine_pod, failed],
                {"statusTemplate": _pod_status(ready=False)},
            ),
        ]
    return [
        *stages,
        _stage("pod-complete", "Pod", [*running, job_pod], {"statusTemplate": _COMPLETE_STATUS}),
        _stage("pod-delete", "Pod", [deleting], {"delete": True}),
    ]
