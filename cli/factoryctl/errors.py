"""Errors of factoryctl, one tree.

    FactoryctlError            anything the user should see as a one-line message, exit 1
    ├── ToolchainError         a pinned binary could not be found or built; names the step
    ├── ComponentError         a fleet component failed to start, stop or report
    └── TopologyError          the topology file is missing or invalid

Every error carries a `hint` telling the user what to do next.
"""

from __future__ import annotations


class FactoryctlError(Exception):
    """An error to show the user as one line plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ToolchainError(FactoryctlError):
    """A pinned binary could not be found or built."""


class ComponentError(FactoryctlError):
    """A fleet component failed to start, stop or report."""


class TopologyError(FactoryctlError):
    """The local topology file is missing or invalid."""
