"""Shared API pieces: group/version, the strict base model, Kubernetes-style conditions.

Field names are the API contract (docs/architecture.md, "The API"): Python names are
snake_case and the wire names are their camelCase aliases, generated once here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from factory_contract import grammar, names

# The API's names and grammars are the contract's (factory_contract), under the names the
# operator has always used.
GROUP = names.GROUP
VERSION = names.VERSION
API_VERSION = names.API_VERSION
JURISDICTION = grammar.JURISDICTION

# Bounds that keep CEL rules within the API server's cost budget and objects readable.
MAX_NAME = 63
MAX_STRING = 256
MAX_URI = 1024
MAX_LABELS = 32
MAX_CONDITIONS = 8

DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = grammar.REGION  # a region name is a DNS-1123 label
CAMEL_CASE_REASON = r"^[A-Z][A-Za-z0-9]*$"
RFC3339 = "date-time"
LabelValue = Annotated[str, StringConstraints(max_length=MAX_NAME)]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One entry of ``x-kubernetes-validations`` (a CEL rule with its user-facing message)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules into the generated CRD schema."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every spec/status model: unknown fields are refused, wire names are camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset/None fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The part of ``metadata`` the operator reads.

    Unlike the spec models this one ignores unknown fields: the API server adds many
    (managedFields, resourceVersion, ...) that are none of the operator's business.
    """

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace (namespaced kinds).")
    uid: str | None = Field(default=None, description="Unique id, used in owner references.")
    generation: int | None = Field(default=None, description="Spec generation.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    deletion_timestamp: str | None = Field(default=None, description="Set when deleting.")


class Condition(ApiModel):
    """One observation of the object's state, following Kubernetes API conventions."""

    type: str = Field(
        description="Condition type: Ready, Progressing or Degraded.",
        max_length=64,
        pattern=CAMEL_CASE_REASON,
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word a program can switch on, e.g. ResidencyViolation.",
        max_length=128,
        pattern=CAMEL_CASE_REASON,
    )
    message: str = Field(
        default="", description="What happened and what to do, for humans.", max_length=4096
    )
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339); unchanged while status is unchanged.",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from.", ge=0
    )
