"""k8s layer: all I/O against the API server (observe, apply, delete, status, events)."""

from .apply import execute
from .client import FIELD_MANAGER, Kube, load_api_client
from .metrics import OperatorMetrics
from .observe import World, node_info, observe, read_factory, read_region

__all__ = [
    "FIELD_MANAGER",
    "Kube",
    "OperatorMetrics",
    "World",
    "execute",
    "load_api_client",
    "node_info",
    "observe",
    "read_factory",
    "read_region",
]
