"""Property: over random fleets, tenants, headers, health and policies, the chosen backend
(and every failover candidate) is compliant, or the answer is an error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from factory_router.policy.config import EjectionConfig, ScoringConfig
from factory_router.policy.errors import (
    InvalidResidency,
    ModelNotFound,
    NoCompliantBackend,
    ResidencyDenied,
)
from factory_router.policy.fleet import Backend, Region, build_fleet
from factory_router.policy.health import Ejector
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import plan
from factory_router.policy.scoring import LoadSample, Observed
from factory_router.policy.tenants import Tenant, allowed_jurisdictions

JURISDICTIONS = ["EU", "US", "UK", "IN"]
REGION_NAMES = ["r0", "r1", "r2", "r3", "r4", "ghost"]
MODELS = ["a", "b", "c"]

regions_st = st.lists(
    st.tuples(st.sampled_from(REGION_NAMES[:-1]), st.none() | st.sampled_from(JURISDICTIONS)),
    max_size=5,
    unique_by=lambda t: t[0],
)
backend_st = st.builds(
    lambda i, model, pool, region, serving, terminating: Backend(
        id=f"b{i}",
        model=model,
        pool=pool,
        region=region,
        url=f"http://b{i}",
        serving=serving,
        terminating=terminating,
    ),
    st.integers(0, 10_000),
    st.sampled_from(MODELS),
    st.sampled_from(["p0", "p1", "p2"]),
    st.none() | st.just("") | st.sampled_from(REGION_NAMES),
    st.booleans(),
    st.booleans(),
)
header_st = st.none() | st.text(alphabet="EUSKINeuskin ,*X", max_size=10)


class RandomView:
    router_region = None

    def __init__(self, data: dict[str, tuple[int, float, float]]) -> None:
        self.data = data

    def sample(self, backend: Backend) -> LoadSample | None:
        d = self.data.get(backend.id)
        return LoadSample(waiting=d[1], running=d[0], kv_usage=d[2] / 100) if d else None

    def inflight(self, backend_id: str) -> int:
        return self.data.get(backend_id, (0, 0, 0))[0]

    def inflight_at_snapshot(self, backend_id: str) -> int:
        return 0

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        return None

    def observed_duration_ms(self, backend_id: str) -> float | None:
        return None

    def capacity(self, backend: Backend) -> float | None:
        return float(self.data[backend.id][0] + 1) if backend.id in self.data else None

    def measured_rtt_ms(self, region: str) -> float | None:
        return None

    def client_observed(self, backend: Backend) -> Observed:
        return Observed()


@settings(max_examples=300, deadline=None)
@given(
    regions=regions_st,
    backends=st.lists(backend_st, max_size=12, unique_by=lambda x: x.id),
    tenant_j=st.sets(st.sampled_from(JURISDICTIONS), min_size=1),
    header=header_st,
    model=st.sampled_from(MODELS),
    policy=st.sampled_from(list(PolicyName)),
    ejected=st.sets(st.integers(0, 10_000)),
    load=st.dictionaries(
        st.integers(0, 10_000), st.tuples(st.integers(0, 80), st.floats(0, 50), st.floats(0, 100))
    ),
    prefix=st.none() | st.text(max_size=8),
)
def test_chosen_backend_is_always_compliant(
    regions: list[tuple[str, str | None]],
    backends: list[Backend],
    tenant_j: set[str],
    header: str | None,
    model: str,
    policy: PolicyName,
    ejected: set[int],
    load: dict[int, tuple[int, float, float]],
    prefix: str | None,
) -> None:
    fleet = build_fleet([Region(n, j) for n, j in regions], backends)
    tenant = Tenant("t", frozenset(tenant_j))
    ejector = Ejector(EjectionConfig(consecutive_failures=1, base_seconds=100))
    for i in ejected:
        ejector.record_failure(f"b{i}", 0.0)
    view = RandomView({f"b{k}": v for k, v in load.items()})
    try:
        allowed = allowed_jurisdictions(tenant, header, fleet.jurisdictions | tenant.jurisdictions)
        result = plan(
            fleet,
            RouteRequest(model, allowed, "r0", prefix, "rid"),
            ranker=Ranker(policy, ScoringConfig()),
            view=view,
            ejector=ejector,
            now=1.0,
        )
    except (InvalidResidency, ResidencyDenied):
        return
    except ModelNotFound:
        assert not any(x.model == model and fleet.jurisdiction_of(x) in allowed for x in backends)
        return
    except NoCompliantBackend:
        assert any(x.model == model and fleet.jurisdiction_of(x) in allowed for x in backends)
        return
    assert allowed <= tenant.jurisdictions
    assert result.ordered
    region_j = dict(regions)
    for ranked in result.ordered:
        chosen = ranked.backend
        assert chosen.model == model
        assert chosen.region and chosen.region in region_j
        assert region_j[chosen.region] in allowed
        assert region_j[chosen.region] in tenant.jurisdictions
        assert chosen.serving and not ejector.is_ejected(chosen.id, 1.0)
