"""k8s layer: all I/O against the API server (observe, apply, delete, status, events) and
Prometheus (the autoscaler's load)."""

from .apply import execute
from .autoscaler import plan_scaling
from .cache import CachedObject, OwnWrites, Watched, cached_object
from .client import FIELD_MANAGER, Kube, load_api_client, may_watch
from .load import LoadReader
from .metrics import OperatorMetrics
from .observe import World, node_info, observe, read_factory

__all__ = [
    "FIELD_MANAGER",
    "CachedObject",
    "Kube",
    "LoadReader",
    "OperatorMetrics",
    "OwnWrites",
    "Watched",
    "World",
    "cached_object",
    "execute",
    "load_api_client",
    "may_watch",
    "node_info",
    "observe",
    "plan_scaling",
    "read_factory",
]
