"""Write requests recorded by the local API server's audit log (writes only, Metadata level)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AuditEvent:
    verb: str
    user_agent: str
    resource: str
    namespace: str
    name: str
    subresource: str
    code: int


def audit_log(kubeconfig: Path) -> Path:
    """The audit log of a kwokctl cluster, beside its kubeconfig."""
    return kubeconfig.parent / "logs" / "audit.log"


class AuditReader:
    """Reads the events appended to the audit log since it was opened (or last read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[AuditEvent]:
        if not self.path.exists():
            return []
        with self.path.open() as log:
            log.seek(self.offset)
            text = log.read()
        complete, _, _ = text.rpartition("\n")
        self.offset += len(complete.encode()) + (1 if complete else 0)
        events = []
        for line in complete.splitlines():
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            events.append(AuditEvent(
                verb=entry["verb"], user_agent=entry.get("userAgent", ""),
                resource=ref.get("resource", ""), namespace=ref.get("namespace", ""),
                name=ref.get("name", ""), subresource=ref.get("subresource", ""),
                code=(entry.get("responseStatus") or {}).get("code", 0),
            ))  # fmt: skip
        return events


def operator_writes(events: list[AuditEvent], namespace: str) -> list[AuditEvent]:
    """Writes by the operator (its own client, or kopf) to this namespace or to regions."""
    return [
        e for e in events
        if e.user_agent.startswith(("factory-operator", "kopf"))
        and (e.namespace == namespace or e.resource == "fleetregions")
    ]  # fmt: skip
