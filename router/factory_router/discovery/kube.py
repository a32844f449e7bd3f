"""Kubernetes objects -> Fleet: a pure translation, plus the cache that watch events update.

Sources (API contract `inference.factory.dev/v1alpha1`: docs/architecture.md, "The API"),
the FleetRegions and InferenceFactories read through the contract's views
(`factory_contract.status`: a field the router cannot use reads as absent):

- FleetRegion (cluster-scoped): `metadata.name` is the region, `spec.jurisdiction` its
  jurisdiction (absent or malformed: the region is unknown, nothing in it is routable),
  `spec.endpoint` the region's entry point in one-cluster-per-region fleets,
  `spec.pricing` price per accelerator-hour by accelerator type (cost weight).
- InferenceFactory: `spec.model.name` is the model; `status.pools[]` (name, region,
  jurisdiction) are the pools really running, `status.pools[].costPerMillionTokens` their
  live cost (`policy.cost`); `spec.pools[].accelerator` the list price,
  `engine.args.maxNumSeqs` (the pool's, else the factory's) the batch capacity.
- EndpointSlices of Service `<factory>-<pool>` (label `kubernetes.io/service-name`):
  one backend per endpoint; `conditions.serving`/`terminating` are honoured (a terminating
  endpoint is used only when no ready one is left, so rollouts and scale-down drop nothing).
- Pools (`Fleet.pools`): every pool of `status.pools[]` except `Blocked` ones, with its
  `desiredReplicas` and whether an autoscaler wakes it (`spec.autoscaling`): a request
  whose compliant pools are all at zero or starting is held for them (`app/hold.py`).
- Pods: annotation `inference.factory.dev/address: host:port` overrides the endpoint's
  address (the local fleet's simulated engines listen on 127.0.0.1); label
  `inference.factory.dev/revision` is the backend's revision (a canary's pods carry the new
  one), which `status.pools[].canary` (revision, weight) splits by (`policy.canary`).

Fail closed: a pool whose status jurisdiction disagrees with its FleetRegion's gets no
region (never a candidate, still visible in the explain output).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from factory_contract import names
from factory_contract.status import FactoryView, PoolStatusView, RegionView
from factory_router.policy.config import CostConfig
from factory_router.policy.cost import Cost, PoolPrice, resolve_costs
from factory_router.policy.fleet import Backend, Canary, Fleet, Pool, Region, RttMatrix, build_fleet

ADDRESS_ANNOTATION = names.prefixed(names.ADDRESS_ANNOTATION)
REVISION_LABEL = names.prefixed(names.REVISION_LABEL)
SERVICE_NAME_LABEL = names.SERVICE_NAME_LABEL
MANAGED_BY_SELECTOR = names.MANAGED_BY_SELECTOR
DEFAULT_PORT = 8000
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")

Obj = Mapping[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


def _get(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(p)
    return cur


def _key(obj: Obj) -> Key:
    return (_get(obj, "metadata", "namespace") or "", _get(obj, "metadata", "name") or "")


def region_view(obj: Obj) -> RegionView | None:
    """The FleetRegion as the router reads it; None when it cannot be read at all."""
    try:
        return RegionView.model_validate(obj)
    except ValidationError:
        return None


def factory_view(obj: Obj) -> FactoryView | None:
    """The InferenceFactory as the router reads it; None (skipped: nothing of it is routed)
    when it cannot be read at all."""
    try:
        return FactoryView.model_validate(obj)
    except ValidationError:
        return None


def region_of(obj: Obj) -> Region:
    """The policy's Region: the FleetRegion's name and jurisdiction (None when absent or
    malformed: nothing in the region is routable)."""
    view = region_view(obj)
    if view is None:
        return Region(_get(obj, "metadata", "name") or "", None)
    return Region(view.name, view.spec.jurisdiction)


def _address(endpoint: Obj, pod: Obj | None, port: int) -> str | None:
    override = _get(pod, "metadata", "annotations", ADDRESS_ANNOTATION)
    if isinstance(override, str) and _HOST_PORT.match(override.strip()):
        return override.strip()
    addresses = endpoint.get("addresses") or []
    if not addresses:
        return None
    ip = str(addresses[0])
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _port(slice_obj: Obj) -> int:
    ports = slice_obj.get("ports") or []
    for p in ports:
        if p.get("name") == "http" and p.get("port"):
            return int(p["port"])
    return int(ports[0]["port"]) if ports and ports[0].get("port") else DEFAULT_PORT


def _serving(endpoint: Obj) -> tuple[bool, bool]:
    cond = endpoint.get("conditions") or {}
    ready, serving, terminating = cond.get("ready"), cond.get("serving"), cond.get("terminating")
    # API conventions: an unset `ready`/`serving` is to be read as true.
    is_serving = serving if serving is not None else (ready if ready is not None else True)
    return bool(is_serving), bool(terminating)


def _revision(pod: Obj | None) -> str | None:
    value = _get(pod, "metadata", "labels", REVISION_LABEL)
    return value if isinstance(value, str) and value else None


def _list_price(factory: FactoryView, pool_name: str, region: RegionView | None) -> float | None:
    """USD per replica-hour: the region's price for the pool's accelerator type x count;
    None when not priced."""
    spec = factory.pool_spec(pool_name)
    if spec is None or region is None or spec.accelerator.type is None:
        return None
    price = region.spec.pricing.get(spec.accelerator.type)
    count = spec.accelerator.count
    if price is None or (count is not None and count < 0):
        return None
    total = price * float(count or 1)
    return total if math.isfinite(total) else None  # never a negative or unbounded cost


def _pool(
    factory: FactoryView, status: PoolStatusView, model: str, region: str | None, cost: float
) -> Pool:
    desired = status.desired_replicas
    canary = status.canary
    return Pool(
        namespace=factory.metadata.namespace,
        factory=factory.metadata.name,
        name=status.name,
        model=model,
        region=region,
        service=names.pool_object_name(factory.metadata.name, status.name),
        desired_replicas=desired if desired is not None and desired > 0 else 0,
        wakeable=factory.wakeable(status.name),
        cost=cost,
        max_num_seqs=factory.max_num_seqs(status.name),
        canary=Canary(canary.revision, canary.weight) if canary is not None else None,
    )


def fleet_from_objects(
    fleet_regions: list[Obj],
    factories: list[Obj],
    endpoint_slices: list[Obj],
    pods: list[Obj],
    *,
    rtt: RttMatrix | None = None,
    local_region: str | None = None,
    cost_config: CostConfig | None = None,
) -> Fleet:
    """Pure: the current objects to a Fleet (see the module docstring for the rules)."""
    region_views = {v.name: v for v in map(region_view, fleet_regions) if v is not None}
    regions = {r.name: r for r in map(region_of, fleet_regions) if r.name}
    pods_by_key = {_key(p): p for p in pods}
    slices: dict[Key, list[Obj]] = {}
    for s in endpoint_slices:
        svc = _get(s, "metadata", "labels", SERVICE_NAME_LABEL)
        if svc:
            slices.setdefault((_get(s, "metadata", "namespace") or "", svc), []).append(s)
    backends: dict[str, Backend] = {}
    pools: list[Pool] = []
    prices: dict[Key, PoolPrice] = {}  # (namespace, service)
    for factory in filter(None, map(factory_view, factories)):
        ns, fname = factory.metadata.namespace, factory.metadata.name
        model = factory.spec.model.name
        if not model:
            continue
        for pool in factory.status.pools:
            pname, region = pool.name, pool.region
            if not pname:
                continue
            known = regions.get(region) if region else None
            claimed = pool.jurisdiction
            if known is not None and claimed and known.jurisdiction != claimed.upper():
                region = None  # disagreement: fail closed
            svc = names.pool_object_name(fname, pname)
            list_price = _list_price(factory, pname, region_views.get(region) if region else None)
            cost = list_price or 0.0
            prices[(ns, svc)] = PoolPrice(model, pool.cost_per_million_tokens, list_price)
            if pool.state != "Blocked":  # never deployed: nothing to wake
                pools.append(_pool(factory, pool, model, region, cost))
            capacity = factory.max_num_seqs(pname)
            found = False
            for s in slices.get((ns, svc), []):
                port = _port(s)
                for ep in s.get("endpoints") or []:
                    target = ep.get("targetRef") or {}
                    pod_name = target.get("name") if target.get("kind", "Pod") == "Pod" else None
                    pod = pods_by_key.get((target.get("namespace") or ns, pod_name or ""))
                    address = _address(ep, pod, port)
                    if address is None:
                        continue
                    found = True
                    serving, terminating = _serving(ep)
                    bid = f"{ns}/{svc}/{pod_name or address}"
                    backends[bid] = Backend(
                        id=bid,
                        model=model,
                        pool=svc,
                        region=region,
                        url=f"http://{address}",
                        factory=fname,
                        namespace=ns,
                        pod=pod_name,
                        cost=cost,
                        max_num_seqs=capacity,
                        serving=serving,
                        terminating=terminating,
                        revision=_revision(pod),
                        pool_name=pname,
                    )
            view = region_views.get(region) if region else None
            endpoint = view.spec.endpoint if view is not None else None
            if not found and endpoint and region and region != local_region:
                bid = f"region:{region}/{model}"
                backends.setdefault(
                    bid,
                    Backend(
                        id=bid,
                        model=model,
                        pool=svc,
                        region=region,
                        url=endpoint.rstrip("/"),
                        factory=fname,
                        namespace=ns,
                        cost=cost,
                        via_endpoint=True,
                        pool_name=pname,
                    ),
                )
    costs = resolve_costs(prices, cost_config or CostConfig())
    priced = [_with_cost(b, costs.get((b.namespace or "", b.pool))) for b in backends.values()]
    return build_fleet(regions.values(), priced, rtt, pools)


def _with_cost(backend: Backend, cost: Cost | None) -> Backend:
    """The backend at its pool's cost per million tokens (`policy.cost`)."""
    if cost is None:
        return replace(backend, cost=0.0, cost_source="none")
    return replace(backend, cost=cost.per_mtok, cost_source=cost.source)


@dataclass
class KubeCache:
    """The objects last seen by the watches; `apply` is fed watch events."""

    objects: dict[str, dict[Key, Obj]] = field(
        default_factory=lambda: {k: {} for k in ("regions", "factories", "slices", "pods")}
    )

    def replace(self, kind: str, items: list[Obj]) -> None:
        """A fresh list (after a relist): replaces everything of that kind."""
        self.objects[kind] = {_key(o): o for o in items}

    def apply(self, kind: str, event_type: str, obj: Obj) -> bool:
        """Apply one watch event; True when the cache changed."""
        store = self.objects[kind]
        key = _key(obj)
        if event_type == "DELETED":
            return store.pop(key, None) is not None
        if event_type in ("ADDED", "MODIFIED"):
            store[key] = obj
            return True
        return False  # BOOKMARK / ERROR

    def fleet(self, rtt: RttMatrix | None = None, local_region: str | None = None) -> Fleet:
        o = self.objects
        return fleet_from_objects(
            list(o["regions"].values()),
            list(o["factories"].values()),
            list(o["slices"].values()),
            list(o["pods"].values()),
            rtt=rtt,
            local_region=local_region,
        )
