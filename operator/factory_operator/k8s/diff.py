"""Decide whether a child needs a write: the operator must send nothing once converged.

A server-side apply of an unchanged manifest is still a write request, so each applied
manifest carries a hash annotation of itself; a child is re-applied only when the hash
differs (our intent changed) or the live object no longer contains what we want (someone
else changed one of our fields: drift).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Obj = dict[str, Any]


def manifest_hash(manifest: Obj) -> str:
    """Stable hash of a desired manifest (without its own hash annotation)."""
    return hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:16]


def with_hash(manifest: Obj, key: str) -> Obj:
    """A copy of the manifest annotated with its own hash."""
    digest = manifest_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), key: digest}
    return {**manifest, "metadata": meta}


def _empty(value: Any) -> bool:
    return value is None or value in ([], {})


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` holds every field of ``wanted`` (server defaults may add more)."""
    if isinstance(wanted, dict):
        # The API server drops empty lists and maps: a missing key holds an empty wanted value.
        return isinstance(live, dict) and all(
            contains(live[k], v) if k in live else _empty(v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted or str(live) == str(wanted))


def first_drift(live: Any, wanted: Any, path: str = "") -> str | None:
    """The path of the first wanted field that ``live`` does not hold (for logs), or None."""
    if isinstance(wanted, dict):
        if not isinstance(live, dict):
            return path or "."
        for k, v in wanted.items():
            if k not in live:
                if _empty(v):
                    continue
                return f"{path}.{k}"
            if (found := first_drift(live[k], v, f"{path}.{k}")) is not None:
                return found
        return None
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return path
        for i, (a, b) in enumerate(zip(live, wanted, strict=True)):
            if (found := first_drift(a, b, f"{path}[{i}]")) is not None:
                return found
        return None
    return None if contains(live, wanted) else path


def needs_apply(desired: Obj, live: Obj | None, key: str) -> bool:
    """True when the child is missing, our intent changed, or it drifted."""
    if live is None:
        return True
    annotated = with_hash(desired, key)
    current = (live.get("metadata", {}).get("annotations") or {}).get(key)
    if current != annotated["metadata"]["annotations"][key]:
        return True
    return not contains(
        {k: live.get(k) for k in ("metadata", "spec")},
        {k: desired[k] for k in ("metadata", "spec") if k in desired},
    )


def merge_patch(current: Any, desired: Any) -> Any:
    """A JSON merge patch (RFC 7386) that turns ``current`` into ``desired``: ``desired``
    itself, plus ``null`` for every key of ``current`` it no longer has, at every depth of
    nested objects (lists are replaced whole). Without the nulls a merge patch keeps what it
    does not mention: a status field the plan dropped (a rollout's stepStartedAt) would live
    on."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: Obj = {k: None for k in current if k not in desired}
    for key, value in desired.items():
        patch[key] = merge_patch(current.get(key), value) if key in current else value
    return patch
