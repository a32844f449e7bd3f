"""Fault hooks for router tests: stall before the first token, answer 5xx, fail /health."""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import BaseModel, ConfigDict, Field


class FaultSpec(BaseModel):
    """What to inject; the control API takes and returns this shape."""

    model_config = ConfigDict(extra="forbid")

    stall_s: float = Field(default=0.0, ge=0.0, description="hold requests before any byte")
    error_status: int | None = Field(default=None, ge=400, le=599)
    error_count: int | None = Field(default=None, ge=1, description="None: until cleared")
    unhealthy: bool = False


class Faults:
    """Live fault state of one engine. ``clear()`` releases stalled requests at once."""

    def __init__(self) -> None:
        self.spec = FaultSpec()
        self._cleared = asyncio.Event()

    def set(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._cleared = asyncio.Event()

    def clear(self) -> None:
        self.spec = FaultSpec()
        self._cleared.set()

    def take_error(self) -> int | None:
        """The status to fail this request with, counting down ``error_count``."""
        status = self.spec.error_status
        if status is None:
            return None
        if self.spec.error_count is not None:
            remaining = self.spec.error_count - 1
            self.spec = self.spec.model_copy(
                update={
                    "error_count": remaining or None,
                    "error_status": status if remaining else None,
                }
            )
        return status

    async def stall(self) -> None:
        if self.spec.stall_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cleared.wait(), timeout=self.spec.stall_s)
