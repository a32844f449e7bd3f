"""Engine layer: the continuous-batching model, its KV/prefix cache and vLLM metrics.

Imports only ``factory_sim.profiles``; knows nothing of HTTP.
"""

from factory_sim.engine.config import Behaviour, EngineConfig, ResolvedLimits
from factory_sim.engine.core import SimEngine
from factory_sim.engine.sequence import SamplingRequest, Sequence, TokenEvent

__all__ = [
    "Behaviour",
    "EngineConfig",
    "ResolvedLimits",
    "SamplingRequest",
    "Sequence",
    "SimEngine",
    "TokenEvent",
]
