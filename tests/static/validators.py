"""Helpers of the third-party validator tests: what is validated, how each validator is run,
and the allowlist (tests/static/validator-allowlist.yaml) that every finding is held against.

Sources, each written to one YAML file named after it:

- `chart-default`, `chart-all-on`: `helm template` of the chart (default values; every
  optional part on, with the Prometheus Operator's API present);
- `gitops-<region>`: `kubectl kustomize` of each GitOps overlay;
- `workloads-<factory>`: the children the operator's pure planner renders for each factory in
  deploy/examples (Deployments, Services, PDBs, and PodMonitors as when their CRD exists).

A finding is one (validator, source, kind, name, check, message). kubeconform reports an
invalid object, an object without a schema, or an object it skipped; kube-score reports a
check graded below "all OK"; promtool reports a rule file that fails `check rules` or a rules
unit test that fails. The validators run from the pinned toolchain (`factoryctl dev tools`)
and promtool from Debian's prometheus package; no schema is fetched at test time.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan import Observed, OperatorSettings, plan_factory

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = Path(__file__).with_name("validator-allowlist.yaml")
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "deploy" / "examples"
NOW = "2026-01-01T00:00:00Z"
VALIDATORS = ("kubeconform", "kube-score", "promtool")
# kube-score grades: 1 critical, 5 warning, 7 almost OK, 10 all OK.
KUBE_SCORE_OK = 10
TIMEOUT_SECONDS = 120
# kubeconform's layout of a schema folder: `<kind>-<group prefix>-<version>.json`.
SCHEMA_FILE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
Obj = dict[str, Any]

# Every optional part of the chart on, each optional block filled (router.region comes from
# the base set of the render); rendered with the Prometheus Operator's API present.
_POD_EXTRAS: Obj = {
    "extraArgs": ["--log-level=debug"],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                ]
            }
        }
    },
    "priorityClassName": "platform-critical",
    "podAnnotations": {"example.com/team": "ml-platform"},
    "podLabels": {"team": "ml-platform"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
    "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
}
ALL_ON_VALUES: Obj = {
    "commonLabels": {"cost-center": "ml"},
    "imagePullSecrets": [{"name": "registry"}],
    "operator": {
        **_POD_EXTRAS,
        "image": {"digest": "sha256:" + "0" * 64},
        "region": "eu-west-1",
        "watchNamespaces": ["ml", "inference"],
    },
    "router": {
        **_POD_EXTRAS,
        "prometheusUrl": "http://prometheus.monitoring:9090",
        "endpointKey": {"existingSecret": "router-endpoint-key"},
        "service": {"annotations": {"example.com/lb": "internal"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["llm.example.com"],
            "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
        },
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateways"}],
            "hostnames": ["llm.example.com"],
        },
    },
    "networkPolicy": {
        "routerIngress": {"cidrs": ["10.0.0.0/8"], "namespaceLabels": {"team": "apps"}},
        "engines": {"namespaceLabels": {"team": "ml"}},
        "routerPeers": [
            {"name": "us-east-1", "cidrs": ["198.51.100.10/32"], "ports": [443]},
            {
                "name": "eu-central-1",
                "namespaceLabels": {"kubernetes.io/metadata.name": "fleet-eu"},
                "podLabels": {"app.kubernetes.io/component": "router"},
                "ports": [8080],
            },
        ],
    },
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "enginePodMonitor": {"enabled": True, "namespaces": ["ml"]},
    },
    "dashboards": {"namespace": "grafana", "annotations": {"grafana_folder": "Inference"}},
    "extraObjects": [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "corp-ca"},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
        }
    ],
}
ALL_ON_ARGS = ("--api-versions", "monitoring.coreos.com/v1")


@dataclass(frozen=True)
class Finding:
    """One thing a validator objects to."""

    validator: str
    source: str
    kind: str
    name: str
    check: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.validator} {self.check}: {self.source} {self.kind}/{self.name}: {self.message}"
        )


@dataclass(frozen=True)
class Allowed:
    """An allowlist entry: the findings it covers (globs) and why they are accepted."""

    validator: str
    check: str
    reason: str
    source: str = "*"
    kind: str = "*"
    name: str = "*"

    def covers(self, finding: Finding) -> bool:
        return (
            self.validator == finding.validator
            and fnmatch.fnmatchcase(finding.check, self.check)
            and fnmatch.fnmatchcase(finding.source, self.source)
            and fnmatch.fnmatchcase(finding.kind, self.kind)
            and fnmatch.fnmatchcase(finding.name, self.name)
        )

    def __str__(self) -> str:
        return f"{self.validator} {self.check} {self.source} {self.kind}/{self.name}"


def load_allowlist(path: Path = ALLOWLIST) -> list[Allowed]:
    """The allowlist's entries; a malformed entry (no reason, unknown key) is an error."""
    entries = yaml.safe_load(path.read_text())["findings"]
    allowed = []
    for entry in entries:
        unknown = set(entry) - set(Allowed.__dataclass_fields__)
        if unknown:
            raise ValueError(f"allowlist entry {entry}: unknown keys {sorted(unknown)}")
        if not str(entry.get("reason", "")).strip():
            raise ValueError(f"allowlist entry {entry}: a reason is required")
        if entry.get("validator") not in VALIDATORS:
            raise ValueError(f"allowlist entry {entry}: validator must be one of {VALIDATORS}")
        allowed.append(Allowed(**entry))
    return allowed


def unexplained(findings: Iterable[Finding], allowed: list[Allowed]) -> list[Finding]:
    """The findings no allowlist entry covers."""
    return [f for f in findings if not any(a.covers(f) for a in allowed)]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a validator with a deadline, output captured."""
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False, cwd=cwd
    )


def write_source(folder: Path, name: str, objs: list[Obj]) -> Path:
    """Write one source's objects as a multi-document YAML file named after it."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return path


# --- the operator's generated workloads -------------------------------------------------


def _example_documents() -> Iterator[Obj]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def example_workloads() -> dict[str, list[Obj]]:
    """factory name -> the children the planner renders for it (PodMonitor CRD present)."""
    docs = list(_example_documents())
    regions = [FleetRegion.model_validate(d) for d in docs if d["kind"] == "FleetRegion"]
    by_name = {r.name: r for r in regions}
    rendered = {}
    for doc in docs:
        if doc["kind"] != "InferenceFactory":
            continue
        factory = InferenceFactory.model_validate(doc)
        observed = Observed(now=NOW, podmonitor_crd=True)
        plan = plan_factory(factory, by_name, observed, OperatorSettings())
        rendered[factory.metadata.name] = list(plan.apply)
    return rendered


# --- kubeconform ---------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """An openAPIV3Schema as a strict JSON schema: objects with declared properties refuse
    others (the API server would prune them silently), `nullable` admits null."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in node and "additionalProperties" not in node and not open_object:
        out["additionalProperties"] = False
    return out


def write_crd_schemas(folder: Path) -> str:
    """JSON schemas of our own kinds from crds/*.yaml, laid out as kubeconform's
    `-schema-location` template returned here expects."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group_prefix = crd["spec"]["group"].split(".")[0]
        kind = crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            target = folder / f"{kind}-{group_prefix}-{version['name']}.json"
            target.write_text(json.dumps(schema))
    return f"{folder}/{SCHEMA_FILE}"


def kubeconform(
    binary: Path, schema_locations: list[str], skip_kinds: list[str], files: dict[str, Path]
) -> tuple[list[Finding], dict[str, int]]:
    """Findings of `kubeconform -strict` over every source, and how many objects each had."""
    # One worker: it compiles each kind's schema once (parallel workers each compile it).
    cmd = [str(binary), "-strict", "-verbose", "-output", "json", "-n", "1"]
    for location in schema_locations:
        cmd += ["-schema-location", location]
    if skip_kinds:
        cmd += ["-skip", ",".join(skip_kinds)]
    done = run([*cmd, *(str(p) for p in files.values())])
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"kubeconform failed (exit {done.returncode}): {done.stderr}")
    source_of = {str(path): name for name, path in files.items()}
    findings, seen = [], dict.fromkeys(files, 0)
    for res in json.loads(done.stdout)["resources"]:
        source = source_of[res["filename"]]
        seen[source] += 1
        status = res["status"].removeprefix("status").lower()
        if status == "valid":
            continue
        check = {"skipped": "skip", "invalid": "schema"}.get(status, "error")
        # `msg` has every cause; `validationErrors` only the outermost ("/spec: failed").
        message = res.get("msg", "").rpartition("#' - ")[2]
        findings.append(Finding("kubeconform", source, res["kind"], res["name"], check, message))
    return findings, seen


# --- kube-score ----------------------------------------------------------------------------


def kube_score(binary: Path, kubernetes_minor: str, source: str, path: Path) -> list[Finding]:
    """Findings of `kube-score score` over one source (cross-object checks stay within it)."""
    cmd = [str(binary), "score", "--kubernetes-version", f"v{kubernetes_minor}", "-o", "json"]
    done = run([*cmd, str(path)])
    # Exit 1 with a report means critical findings; without one, kube-score failed.
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"kube-score failed (exit {done.returncode}): {done.stderr}")
    findings = []
    for obj in json.loads(done.stdout):
        for result in obj["checks"]:
            if result["skipped"] or result["grade"] >= KUBE_SCORE_OK:
                continue
            comments = result.get("comments") or []
            message = "; ".join(
                f"({c['path']}) {c['summary']}" if c.get("path") else c["summary"] for c in comments
            )
            findings.append(
                Finding(
                    "kube-score",
                    source,
                    obj["type_meta"]["kind"],
                    obj["object_meta"]["name"],
                    result["check"]["id"],
                    message or result["check"]["comment"],
                )
            )
    return findings


# --- promtool ------------------------------------------------------------------------------


def promtool(binary: str, check: str, source: str, args: list[str], cwd: Path) -> list[Finding]:
    """A finding when `promtool <args>` fails (lint findings are fatal in `check rules`)."""
    done = run([binary, *args], cwd=cwd)
    if done.returncode == 0:
        return []
    message = (done.stdout + done.stderr).strip()[-3000:]
    return [Finding("promtool", source, "RuleFile", Path(source).name, check, message)]
