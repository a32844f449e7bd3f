"""API layer: the pydantic models that define the CRDs (single source), errors, crdgen."""

from .common import API_VERSION, GROUP, VERSION, Condition, ObjectMeta
from .engine import EngineArgs, EngineSpec, EnvVar, Speculative
from .factory import (
    Accelerator,
    InferenceFactory,
    InferenceFactorySpec,
    InferenceFactoryStatus,
    ModelSource,
    Pool,
    PoolStatus,
    Replicas,
    Residency,
)
from .region import FleetRegion, FleetRegionSpec, FleetRegionStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Accelerator",
    "Condition",
    "EngineArgs",
    "EngineSpec",
    "EnvVar",
    "FleetRegion",
    "FleetRegionSpec",
    "FleetRegionStatus",
    "InferenceFactory",
    "InferenceFactorySpec",
    "InferenceFactoryStatus",
    "ModelSource",
    "ObjectMeta",
    "Pool",
    "PoolStatus",
    "Replicas",
    "Residency",
    "Speculative",
]
