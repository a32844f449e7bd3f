"""The API's names: group, version and kinds, the label and annotation keys, and how a pool's
children are named.

The operator writes these and the router, the chart and the local fleet read them, so each is
spelled here once. Label and annotation keys live under a prefix the operator can be told
(``--annotation-prefix``); ``DEFAULT_PREFIX`` is what every component assumes unless told the
same.
"""

from __future__ import annotations

GROUP = "inference.factory.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FACTORY_KIND = "InferenceFactory"
FACTORY_PLURAL = "inferencefactories"
REGION_KIND = "FleetRegion"
REGION_PLURAL = "fleetregions"

DEFAULT_PREFIX = GROUP

# Every child of a factory carries app.kubernetes.io/managed-by=inference-factory: what the
# router's and the engines agent's watches select.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "inference-factory"
MANAGED_BY_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
# Set by Kubernetes on every EndpointSlice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# The pool labels of every child and pod (``prefixed(<name>)``).
FACTORY_LABEL = "factory"
POOL_LABEL = "pool"
REGION_LABEL = "region"
JURISDICTION_LABEL = "jurisdiction"
REVISION_LABEL = "revision"
# A canary's Deployment and pods: ``prefixed(TRACK_LABEL) = CANARY_TRACK`` (stable ones do
# not carry the label: adding it would roll every running pod).
TRACK_LABEL = "track"
CANARY_TRACK = "canary"
# The router's admin targeting header (golden prompts to one pool, one revision):
# ``<namespace>/<factory>/<pool>`` or ``<namespace>/<factory>/<pool>@<revision>``.
TARGET_HEADER = "x-factory-target"

# Pod annotations of the local fleet: the engine's real address (the simulated engines
# listen on 127.0.0.1, the router uses it instead of the pod IP), the engine's readiness, and
# the simulator's behaviour.
ADDRESS_ANNOTATION = "address"
ENGINE_READY_ANNOTATION = "engine-ready"
SIM_BEHAVIOUR_ANNOTATION = "sim-behaviour"


def prefixed(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A label or annotation key: ``<prefix>/<name>``."""
    return f"{prefix}/{name}"


def pool_object_name(factory: str, pool: str) -> str:
    """The name of a pool's Deployment, Service, PodDisruptionBudget and PodMonitor."""
    return f"{factory}-{pool}"


CANARY_SUFFIX = "-canary"


def canary_object_name(factory: str, pool: str) -> str:
    """The name of a pool's canary Deployment (the pool's Service reaches it too)."""
    return pool_object_name(factory, pool) + CANARY_SUFFIX
