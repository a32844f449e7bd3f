"""Pydantic JSON schema -> Kubernetes structural OpenAPI v3 schema.

Kubernetes wants a *structural* schema (apiextensions.k8s.io/v1): every node has a type, no
``$ref``, no ``anyOf`` mixing types, no ``additionalProperties`` beside ``properties``,
``exclusiveMinimum`` as a boolean. This module inlines references, turns ``Optional[X]``
into a plain optional X (the operator never writes nulls), drops titles and defaults (the
operator, not the API server, applies defaults: GitOps diffs stay clean), and keeps
descriptions, enums, bounds, patterns and ``x-kubernetes-*`` extensions.
"""

from __future__ import annotations

from typing import Any

from .errors import FactoryError

Schema = dict[str, Any]
_DROPPED = {"title", "default", "examples"}
_VALIDATIONS = "x-kubernetes-validations"


def structural(schema: Schema) -> Schema:
    """Convert a pydantic ``model_json_schema(by_alias=True)`` into a structural schema."""
    defs: dict[str, Schema] = schema.get("$defs", {})
    return _convert({k: v for k, v in schema.items() if k != "$defs"}, defs)


def _overlay(base: Schema, extra: Schema) -> Schema:
    merged = dict(base)
    for key, value in extra.items():
        if key == _VALIDATIONS and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    siblings = {k: v for k, v in node.items() if k not in {"$ref", "anyOf", "allOf"}}
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _overlay(_convert(target, defs), _convert(siblings, defs))
    if "allOf" in node and len(node["allOf"]) == 1:
        return _overlay(_convert(node["allOf"][0], defs), _convert(siblings, defs))
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v != {"type": "null"}]
        if len(variants) != 1:
            raise FactoryError(f"cannot express anyOf {node['anyOf']!r} structurally")
        return _overlay(_convert(variants[0], defs), _convert(siblings, defs))

    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and "properties" not in node:
                out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out:
        out.setdefault("type", "object")
    return out
