"""The grammars of jurisdiction codes and region names, shared by the CRD schema (the
operator's models), the router's tenants file, residency header and discovery.

A jurisdiction is an upper-case code of 2 to 8 letters or digits starting with a letter
(EU, US, UK, IN, APAC): the CRD's pattern, the stricter of the two the operator and the
router once used. A region is a FleetRegion's name, a DNS-1123 label.
"""

from __future__ import annotations

import re

JURISDICTION = r"^[A-Z][A-Z0-9]{1,7}$"
JURISDICTION_MAX = 8
REGION = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
REGION_MAX = 63

_JURISDICTION = re.compile(JURISDICTION)
_REGION = re.compile(REGION)


def normalise_jurisdiction(code: str) -> str:
    """Upper-cased code; raises ValueError on anything but a plain code (no wildcard)."""
    norm = code.strip().upper()
    if not _JURISDICTION.match(norm):
        raise ValueError(f"invalid jurisdiction code {code!r}")
    return norm


def is_region(name: str) -> bool:
    """Whether ``name`` can name a FleetRegion."""
    return len(name) <= REGION_MAX and _REGION.match(name) is not None
