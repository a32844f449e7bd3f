"""Tenant policy parsing and the x-factory-residency grammar (pure)."""

from __future__ import annotations

import pytest

from factory_router.policy.errors import (
    InvalidResidency,
    PolicyError,
    ResidencyDenied,
    Unauthenticated,
)
from factory_router.policy.tenants import (
    Tenant,
    allowed_jurisdictions,
    hash_key,
    load_tenants_text,
    parse_residency,
    parse_tenants,
)
from tests.unit.router.router_testkit import ADMIN_KEY, KEYS, TENANTS_DOC

KNOWN = frozenset({"EU", "US", "UK", "IN"})
EU = Tenant("eu", frozenset({"EU"}))
MULTI = Tenant("multi", frozenset({"EU", "UK"}))


def test_keys_map_to_tenants_by_sha256() -> None:
    table = parse_tenants(TENANTS_DOC)
    assert table.authenticate(f"Bearer {KEYS['eu']}").name == "eu-only"
    assert table.authenticate(f"bearer   {KEYS['us']}  ").name == "us-only"
    assert table.is_admin(f"Bearer {ADMIN_KEY}")
    assert not table.is_admin(f"Bearer {KEYS['eu']}")
    with pytest.raises(Unauthenticated):
        table.authenticate(f"Bearer {hash_key(KEYS['eu'])}")  # the hash is not the key
    for bad in (None, "", "Bearer", "Basic abc", "Bearer nope", KEYS["eu"]):
        with pytest.raises(Unauthenticated):
            table.authenticate(bad)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {},
        [],
        "tenants",
        {"tenants": []},
        {"admin_keys_sha256": [hash_key("a")], "tenants": []},
        {"admin_keys_sha256": [], "tenants": TENANTS_DOC["tenants"]},
        {
            "admin_keys_sha256": [hash_key("a")],
            "tenants": [{"name": "t", "jurisdictions": [], "api_keys_sha256": [hash_key("k")]}],
        },
        {
            "admin_keys_sha256": [hash_key("a")],
            "tenants": [{"name": "t", "jurisdictions": ["*"], "api_keys_sha256": [hash_key("k")]}],
        },
        {
            "admin_keys_sha256": [hash_key("a")],
            "tenants": [{"name": "t", "jurisdictions": ["EU"], "api_keys_sha256": ["plaintext"]}],
        },
        {
            "admin_keys_sha256": [hash_key("a")],
            "tenants": [{"name": "t", "jurisdictions": ["EU"], "api_keys_sha256": []}],
        },
        {
            "admin_keys_sha256": [hash_key("a")],
            "allow_all": True,
            "tenants": [{"name": "t", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("k")]}],
        },
        {
            "admin_keys_sha256": [hash_key("a")],
            "tenants": [
                {"name": "t", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("k")]},
                {"name": "u", "jurisdictions": ["US"], "api_keys_sha256": [hash_key("k")]},
            ],
        },
        {
            "admin_keys_sha256": [hash_key("k")],
            "tenants": [{"name": "t", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("k")]}],
        },
    ],
)
def test_missing_empty_or_doubtful_policy_is_refused(doc: object) -> None:
    with pytest.raises(PolicyError):
        parse_tenants(doc)


def test_unparseable_yaml_is_refused() -> None:
    with pytest.raises(PolicyError):
        load_tenants_text("tenants: [unclosed")
    with pytest.raises(PolicyError):
        load_tenants_text("")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("EU", {"EU"}),
        ("eu", {"EU"}),
        (" e u , Us ", {"EU", "US"}),
        ("EU,EU", {"EU"}),
        ("uk,\tIN", {"UK", "IN"}),
    ],
)
def test_residency_header_grammar(header: str | None, expected: set[str] | None) -> None:
    got = parse_residency(header, KNOWN)
    assert got == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize("header", ["*", "EU,*", "XX", "EU,", ",", "EU;US", "E.U", "EU,ZZ"])
def test_residency_header_invalid_is_400(header: str) -> None:
    with pytest.raises(InvalidResidency) as info:
        parse_residency(header, KNOWN)
    assert info.value.status == 400


def test_header_narrows_never_widens() -> None:
    assert allowed_jurisdictions(MULTI, "eu", KNOWN) == {"EU"}
    assert allowed_jurisdictions(MULTI, None, KNOWN) == {"EU", "UK"}
    # Asking for more than the tenant has yields only what it has.
    assert allowed_jurisdictions(EU, "EU,US", KNOWN) == {"EU"}
    with pytest.raises(ResidencyDenied) as info:
        allowed_jurisdictions(EU, "US", KNOWN)
    assert info.value.status == 403
