"""kopf glue: every handler of the operator, registered on a fresh registry (no globals).

- InferenceFactory create/update/resume (ids ``factory-create``/``-update``/``-resume``) and
  a per-factory daemon (``factory-resync``) that re-evaluates on a timer or when woken;
  all call ``reconcile_factory``.
- A timer per factory with ``spec.autoscaling`` (``factory-autoscale``, every
  ``--autoscale-interval`` seconds): the autoscaler's decision, the same reconcile with the
  load read from ``--prometheus-url``; the other handlers keep its counts.
- FleetRegion events (``region-changed``): refresh the region's status, wake its factories.
- Node events (``node-changed``): when a node's labels, accelerators or readiness changed
  (not on heartbeats), refresh the status of its regions (nodes, ready nodes, accelerator
  capacity) and wake their factories.
- Deployment events of our children (``child-changed``): wake the owning factory.

Watch handlers never write to wake a factory: they set an in-memory event (``FactoryIndex``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

from factory_operator.api import GROUP, VERSION, FleetRegion
from factory_operator.api.errors import TransientError
from factory_operator.k8s import (
    Kube,
    LoadReader,
    OperatorMetrics,
    load_api_client,
    node_info,
    read_region,
)
from factory_operator.plan import OperatorSettings, plan_region_status

from .index import FactoryIndex, Key
from .reconcile import reconcile_factory, utc_now

log = logging.getLogger(__name__)
FACTORIES = "inferencefactories"
REGIONS = "fleetregions"
MANAGED_BY = {"app.kubernetes.io/managed-by": "inference-factory"}


def _pool_regions(spec: Any) -> frozenset[str]:
    return frozenset(p.get("region", "") for p in (spec or {}).get("pools") or [])


def connection_info() -> kopf.ConnectionInfo:
    """kopf's connection, from the `kubernetes` client's configuration."""
    cfg: Any = load_api_client().configuration
    # The bearer token: key "BearerToken" since kubernetes 36, "authorization" before; the
    # getter also runs the refresh hook (in-cluster tokens rotate).
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def configure_kopf(kopf_settings: kopf.OperatorSettings, op: OperatorSettings) -> None:
    """Apply the operator's settings to kopf (storage names, timeouts, no chatter)."""
    kopf_settings.persistence.finalizer = op.finalizer
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=op.annotation_prefix
    )
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=op.annotation_prefix, key="last-handled-configuration"
    )
    kopf_settings.networking.request_timeout = op.api_timeout_seconds
    kopf_settings.networking.connect_timeout = op.api_connect_timeout_seconds
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    # kopf posts an Event per handler run by default: writes while idle. Our own Events say
    # what matters (a pool stopped for residency).
    kopf_settings.posting.enabled = False


def build_registry(
    settings: OperatorSettings, kube_factory: Callable[[], Kube], metrics: OperatorMetrics
) -> kopf.OperatorRegistry:
    """A kopf registry with all of the operator's handlers bound to these settings."""
    registry = kopf.OperatorRegistry()
    index = FactoryIndex()
    op_settings = settings  # kopf passes its own settings under the name `settings`
    clients: dict[str, Kube] = {}

    def kube() -> Kube:
        if "kube" not in clients:
            clients["kube"] = kube_factory()
        return clients["kube"]

    loads = LoadReader(settings.prometheus_url) if settings.prometheus_url else None

    async def reconcile(body: Any, key: Key, *, decide: bool = False) -> None:
        entry = index.entry(key)
        index.set_regions(key, _pool_regions(body.get("spec")))
        async with entry.lock:
            await reconcile_factory(kube(), body, settings, metrics, loads, decide=decide)

    # A fresh registry has none of kopf's default login handlers: log in with the same
    # credentials as the operator's own client (in-cluster service account, else $KUBECONFIG).
    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, op_settings)

    @kopf.on.create(GROUP, VERSION, FACTORIES, id="factory-create", registry=registry)
    @kopf.on.update(GROUP, VERSION, FACTORIES, id="factory-update", registry=registry)
    @kopf.on.resume(GROUP, VERSION, FACTORIES, id="factory-resume", registry=registry)
    async def factory_changed(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
        await reconcile(body, (namespace or "", name))

    @kopf.daemon(
        GROUP, VERSION, FACTORIES, id="factory-resync", registry=registry, cancellation_timeout=5.0
    )
    async def factory_resync(
        body: kopf.Body, name: str, namespace: str | None, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        key = (namespace or "", name)
        entry = index.entry(key)
        try:
            while not stopped:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry.wake.wait(), timeout=settings.resync_seconds)
                entry.wake.clear()
                if stopped:
                    break
                try:
                    await reconcile(body, key)
                except (kopf.PermanentError, kopf.TemporaryError) as err:
                    log.warning("resync: %s", err, extra={"factory": name})
        finally:
            index.forget(key)
            metrics.forget_factory(*key)

    def autoscaled(spec: kopf.Spec, **_: Any) -> bool:
        return spec.get("autoscaling") is not None

    # Not on the request path: routing never waits for it. kopf runs one timer per factory
    # and never overlaps its runs; the factory's lock orders it with the other handlers.
    @kopf.timer(
        GROUP,
        VERSION,
        FACTORIES,
        id="factory-autoscale",
        registry=registry,
        interval=settings.autoscale_interval_seconds,
        when=autoscaled,
    )
    async def factory_autoscale(
        body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> None:
        try:
            await reconcile(body, (namespace or "", name), decide=True)
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            # The next tick is the retry: no backoff state for kopf to keep in annotations.
            log.warning("autoscale: %s", err, extra={"factory": name})

    async def refresh_region(name: str) -> None:
        """The region's status from the region and the nodes as they are now; concurrent
        callers for one region share one refresh."""
        index.mark_region_stale(name)
        async with index.region_lock(name):
            if not index.take_stale(name):
                return
            try:
                obj = await read_region(kube(), name)
                if obj is not None:
                    await refresh_region_status(
                        kube(), region_model(obj), settings.node_label_scheme
                    )
            except TransientError as err:
                index.mark_region_stale(name)  # the next change or event tries again
                log.warning("region status: %s", err, extra={"region": name})

    @kopf.on.event(GROUP, VERSION, REGIONS, id="region-changed", registry=registry)
    async def region_changed(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            index.set_region_selector(name, None)
        else:
            region = region_model(body)
            index.set_region_selector(name, region.spec.selector(name))
            await refresh_region(name)
        index.wake_regions({name})

    @kopf.on.event("", "v1", "nodes", id="node-changed", registry=registry)
    async def node_changed(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        info = None if type == "DELETED" else node_info(dict(body))
        regions = index.node_changed(name, info)
        if info is not None:
            regions |= index.stale_regions_of_node(info.labels)
        for region in sorted(regions):
            await refresh_region(region)
        index.wake_regions(regions)

    @kopf.on.event(
        "apps", "v1", "deployments", id="child-changed", registry=registry, labels=MANAGED_BY
    )
    async def child_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = (body.get("metadata", {}).get("labels") or {}).get(
            f"{settings.annotation_prefix}/factory"
        )
        if owner and namespace:
            index.wake((namespace, owner))

    return registry


def region_model(obj: Any) -> FleetRegion:
    return FleetRegion.model_validate(
        {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj}
    )


async def refresh_region_status(
    kube: Kube, region: FleetRegion, default_scheme: str = "gfd"
) -> None:
    """Patch a FleetRegion's status from its nodes, only when it changed."""
    nodes = [node_info(n) for n in await kube.list("v1", "Node")]
    status = plan_region_status(region, nodes, utc_now(), default_scheme)
    current = region.status.to_wire() if region.status else None
    if status.to_wire() != current:
        await kube.patch_status(
            f"{GROUP}/{VERSION}", "FleetRegion", region.name, None, status.to_wire()
        )
