"""The permissions of the operator's and the router's ServiceAccounts, as the API server
reports them (`kubectl auth can-i --list`), kept as golden files: any change to the chart's
RBAC shows up in review as a diff of these files.

Regenerate with UPDATE_GOLDEN=1 (then review the diff of tests/integration/chart/golden/).
The release's namespace and name are replaced by <namespace> and <release>; columns are
re-aligned after that, and rows sorted, so the files do not depend on the random names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.chart.conftest import Release
from tests.support.cluster import KubectlCluster

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def normalise(text: str, release: Release) -> str:
    """can-i's table with the random names replaced, re-aligned, rows sorted."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = [re.split(r"\s{2,}", line.rstrip()) for line in lines]  # "" = an empty column
    rows = [[cell.replace(release.namespace, "<namespace>").replace(release.name, "<release>")
             for cell in row] for row in rows]  # fmt: skip
    header, body = rows[0], sorted(rows[1:])
    widths = [max(len(row[i]) for row in [header, *body] if i < len(row))
              for i in range(len(header))]  # fmt: skip
    return "".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                          strict=False)).rstrip()
                   + "\n" for row in [header, *body])  # fmt: skip


@pytest.mark.parametrize("component", ["operator", "router"])
def test_service_account_permissions_match_the_golden_file(
    fleet_api: KubectlCluster, installed: Release, component: str
) -> None:
    sa = installed.service_account(component)
    raw = fleet_api.kubectl("auth", "can-i", "--list", "--namespace", installed.namespace,
                            f"--as=system:serviceaccount:{installed.namespace}:{sa}")  # fmt: skip
    got = normalise(raw, installed)
    _compare(got, GOLDEN / f"{component}-can-i.txt", component)


def _compare(got: str, golden: Path, what: str) -> None:
    if UPDATE:
        golden.write_text(got)
    assert golden.is_file(), f"{golden} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert got == golden.read_text(), (
        f"{what}: permissions changed; if intended, regenerate with UPDATE_GOLDEN=1 "
        f"and review the diff:\n{got}"
    )


@pytest.mark.parametrize(("component", "verb", "resource"), [
    ("router", "get", "secrets"),
    ("router", "list", "secrets"),
    ("router", "create", "deployments.apps"),
    ("router", "patch", "inferencefactories.inference.factory.dev"),
    ("router", "delete", "pods"),
    ("operator", "get", "secrets"),
    ("operator", "list", "secrets"),
    ("operator", "delete", "inferencefactories.inference.factory.dev"),
    ("operator", "create", "fleetregions.inference.factory.dev"),
    ("operator", "create", "clusterroles.rbac.authorization.k8s.io"),
    ("operator", "create", "pods"),
    # Claims: watched for their access modes (handlers/indexes.py), never read one by one
    # or written.
    ("operator", "get", "persistentvolumeclaims"),
    ("operator", "create", "persistentvolumeclaims"),
    ("router", "list", "persistentvolumeclaims"),
    # ConfigMaps: golden prompts read by name (k8s/gates.py), never listed, watched or written.
    ("operator", "list", "configmaps"),
    ("operator", "watch", "configmaps"),
    ("operator", "patch", "configmaps"),
    ("router", "get", "configmaps"),
], ids=str)  # fmt: skip
def test_service_accounts_cannot(
    fleet_api: KubectlCluster, installed: Release, component: str, verb: str, resource: str
) -> None:
    subject = f"system:serviceaccount:{installed.namespace}:{installed.service_account(component)}"
    done = fleet_api.run("auth", "can-i", verb, resource, "--all-namespaces", f"--as={subject}")
    assert done.stdout.strip() == "no", (component, verb, resource, done.stdout, done.stderr)


def test_namespaced_operator_permissions_match_the_golden_file(
    fleet_api: KubectlCluster, installed_namespaced: Release, watched_namespace: str
) -> None:
    """operator.watchNamespaces: the workload rules only in the watched namespace (seen from
    there), plus listing Namespaces cluster-wide."""
    release = installed_namespaced
    sa = f"system:serviceaccount:{release.namespace}:{release.service_account('operator')}"
    raw = fleet_api.kubectl("auth", "can-i", "--list", "--namespace", watched_namespace,
                            f"--as={sa}")  # fmt: skip
    got = normalise(raw, release).replace(watched_namespace, "<watched>")
    _compare(got, GOLDEN / "operator-namespaced-can-i.txt", "operator (namespaced)")
    elsewhere = fleet_api.run("auth", "can-i", "list", "deployments.apps", "--namespace",
                              release.namespace, f"--as={sa}")  # fmt: skip
    assert elsewhere.stdout.strip() == "no"
    configmaps = fleet_api.run("auth", "can-i", "get", "configmaps", "--namespace",
                               release.namespace, f"--as={sa}")  # fmt: skip
    assert configmaps.stdout.strip() == "no"  # golden prompts: watched namespaces only
