"""Everything one router instance holds, built once and passed around (no singletons)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry

from factory_router.app.hold import Holds
from factory_router.app.logs import AccessLog
from factory_router.app.metrics import RouterMetrics
from factory_router.app.revisions import RevisionMetrics
from factory_router.flow.control import FlowControl
from factory_router.policy.config import RouterConfig
from factory_router.policy.errors import ModelNotFound
from factory_router.policy.fleet import Backend, Fleet, RttMatrix, build_fleet
from factory_router.policy.health import Ejector, LatencyEjector, RetryBudget
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import RoutePlan, healthy, plan
from factory_router.policy.tenants import TenantLimits, TenantTable
from factory_router.quota.service import QuotaConfig, QuotaService
from factory_router.signals.load import LoadState
from factory_router.upstream.client import UpstreamClient


@dataclass
class RouterState:
    region: str
    tenants: TenantTable
    fleet: Fleet
    config: RouterConfig
    policy: PolicyName
    ranker: Ranker
    ejector: Ejector
    latency_ejector: LatencyEjector
    budget: RetryBudget
    load: LoadState
    upstream: UpstreamClient
    metrics: RouterMetrics
    access_log: AccessLog
    tenant_limits: TenantLimits
    quota: QuotaService  # requests/tokens per minute and per day, shared through Redis
    prometheus_url: str | None = None
    prometheus_error: str | None = None
    draining: bool = False
    inflight: int = 0
    fleet_error: str | None = None
    endpoint_key: str | None = None  # presented to `via_endpoint` backends (their router)
    rtt: RttMatrix | None = None  # --rtt: every fleet installed gets it (reloads included)
    holds: Holds = field(default_factory=lambda: Holds(RouterConfig().hold))  # scale from zero
    flow: FlowControl | None = None  # priority and fairness under saturation (create() sets it)
    # Per-revision series (create() puts them on the metrics' registry).
    revisions: RevisionMetrics = field(default_factory=lambda: RevisionMetrics(CollectorRegistry()))
    rng: random.Random = field(default_factory=random.Random)  # the canary split's draws
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _jurisdictions: tuple[Fleet, TenantTable, frozenset[str]] | None = field(
        default=None, init=False, repr=False
    )

    def request_started(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    @classmethod
    def create(
        cls,
        *,
        region: str,
        tenants: TenantTable,
        fleet: Fleet | None = None,
        config: RouterConfig | None = None,
        policy: PolicyName = PolicyName.SCORE,
        prometheus_url: str | None = None,
        access_log: AccessLog | None = None,
        rtt: RttMatrix | None = None,
        quota: QuotaConfig | None = None,
    ) -> RouterState:
        cfg = config or RouterConfig()
        load = LoadState(
            cfg.scoring.snapshot_stale_seconds,
            router_region=region,
            rtt_window_seconds=cfg.scoring.rtt_window_seconds,
            scoring=cfg.scoring,
        )

        def age() -> float:
            a = load.age()
            return math.inf if a is None else a

        metrics = RouterMetrics(load_age=age, load_stale=lambda: 0.0 if load.fresh() else 1.0)
        state = cls(
            region=region,
            tenants=tenants,
            fleet=fleet or build_fleet([], []),
            config=cfg,
            policy=policy,
            ranker=Ranker(policy, cfg.scoring),
            ejector=Ejector(cfg.ejection),
            latency_ejector=LatencyEjector(cfg.latency_ejection),
            budget=RetryBudget(cfg.retry_budget),
            load=load,
            upstream=UpstreamClient(cfg.timeouts, cfg.limits),
            metrics=metrics,
            access_log=access_log or AccessLog(),
            tenant_limits=TenantLimits(cfg.limits.tenant_max_concurrent_requests),
            quota=QuotaService(quota or QuotaConfig(), metrics.registry),
            prometheus_url=prometheus_url,
            rtt=rtt,
            holds=Holds(cfg.hold, metrics.registry),
            revisions=RevisionMetrics(metrics.registry),
        )
        state.flow = FlowControl(cfg.flow, load, state.candidates, metrics.registry)
        if rtt is not None:
            state.set_fleet(state.fleet)
        # Read at scrape time: no gauge update (and its lock) on every request.
        metrics.inflight.set_function(lambda: state.inflight)
        return state

    def known_jurisdictions(self) -> frozenset[str]:
        """The fleet's and the tenants' jurisdictions; computed again only when either is
        replaced (both are built over every region and tenant: too dear per request)."""
        fleet, tenants = self.fleet, self.tenants
        cached = self._jurisdictions
        if cached is None or cached[0] is not fleet or cached[1] is not tenants:
            known = fleet.jurisdictions | tenants.jurisdictions
            cached = self._jurisdictions = (fleet, tenants, known)
        return cached[2]

    def plan(self, req: RouteRequest, *, explain: bool = False) -> RoutePlan:
        """The request's candidates in order, from the fleet and the signals as they are."""
        return plan(
            self.fleet,
            req,
            ranker=self.ranker,
            view=self.load,
            ejector=self.ejector,
            latency=self.latency_ejector,
            now=self.now(),
            explain=explain,
            draw=None if explain else self.rng.random,
        )

    def candidates(self, model: str, allowed: frozenset[str]) -> list[Backend]:
        """The backends a request could go to now: the residency filter, then health (what
        `plan` ranks); empty when none. For the flow queue's look for room."""
        try:
            compliant = self.fleet.compliant(model, allowed)
        except ModelNotFound:
            return []
        return healthy(compliant, self.ejector, self.now())[0]

    def set_fleet(self, fleet: Fleet) -> None:
        """Swap in a new fleet view; ejection state of departed endpoints is dropped. The
        `--rtt` matrix, when given, replaces the one the fleet came with (a backends file
        reload must not fall back to the file's own or to none)."""
        if self.rtt is not None and fleet.rtt is not self.rtt:
            fleet = replace(fleet, rtt=self.rtt)
        self.fleet = fleet
        self.fleet_error = None
        self.ejector.forget({b.id for b in fleet.backends})
        self.latency_ejector.forget({b.id for b in fleet.backends})
        self.revisions.prune(fleet, self.now())

    @staticmethod
    def now() -> float:
        return time.monotonic()
