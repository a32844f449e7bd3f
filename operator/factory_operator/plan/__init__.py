"""Plan layer: pure functions from spec + observed state to desired children and status."""

from .observed import ChildRef, DeploymentInfo, NodeInfo, Observed, PodProblem
from .planner import Plan, PlannedEvent, plan_factory
from .region import plan_region_status
from .settings import OperatorSettings

__all__ = [
    "ChildRef",
    "DeploymentInfo",
    "NodeInfo",
    "Observed",
    "OperatorSettings",
    "Plan",
    "PlannedEvent",
    "PodProblem",
    "plan_factory",
    "plan_region_status",
]
