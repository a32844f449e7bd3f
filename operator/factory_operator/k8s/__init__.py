"""k8s layer: all I/O against the API server (observe, apply, delete, status, events) and
Prometheus (the autoscaler's load)."""

from .apply import execute
from .autoscaler import plan_scaling
from .client import FIELD_MANAGER, Kube, load_api_client
from .load import LoadReader
from .metrics import OperatorMetrics
from .observe import World, node_info, observe, read_factory, read_region

__all__ = [
    "FIELD_MANAGER",
    "Kube",
    "LoadReader",
    "OperatorMetrics",
    "World",
    "execute",
    "load_api_client",
    "node_info",
    "observe",
    "plan_scaling",
    "read_factory",
    "read_region",
]
