"""Handlers layer: thin kopf glue around ``reconcile_factory``."""

from .indexes import WATCHABLE
from .reconcile import reconcile_factory
from .registry import build_registry, configure_kopf, refresh_region_status

__all__ = [
    "WATCHABLE",
    "build_registry",
    "configure_kopf",
    "reconcile_factory",
    "refresh_region_status",
]
