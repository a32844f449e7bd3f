"""Server layer: aiohttp apps for simulated engines, SimHost, and its HTTP control API."""

from factory_sim.engine import EngineConfig
from factory_sim.server.control import ControlServer, build_control_app
from factory_sim.server.faults import FaultSpec
from factory_sim.server.host import EngineHandle, SimHost

__all__ = [
    "ControlServer",
    "EngineConfig",
    "EngineHandle",
    "FaultSpec",
    "SimHost",
    "build_control_app",
]
