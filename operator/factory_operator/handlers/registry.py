"""kopf glue: every handler of the operator, registered on a fresh registry (no globals).

- The indexes of ``handlers.indexes``: what every reconcile reads instead of listing.
- InferenceFactory create/update/resume (ids ``factory-create``/``-update``/``-resume``) and
  a per-factory daemon (``factory-resync``) that re-evaluates on a timer or when woken;
  all call ``reconcile_factory`` with the indexes.
- A timer per factory with ``spec.autoscaling`` (``factory-autoscale``, every
  ``--autoscale-interval`` seconds): the autoscaler's decision, the same reconcile with the
  load read from ``--prometheus-url``; the other handlers keep its counts.
- A timer per factory (``factory-economics``, every minute): the unit economics' gauges and
  each pool's cost per million tokens in status (``k8s.economics``).
- FleetRegion events (``region-changed``): refresh the region's status, wake its factories.
- Node events (``node-changed``): when a node's labels, accelerators or readiness changed
  (not on heartbeats), refresh the status of its regions (nodes, ready nodes, accelerator
  capacity) and wake their factories.
- Deployment events of our children (``child-changed``): wake the owning factory.

Watch handlers never write to wake a factory: they set an in-memory event (the factory's
``FactoryRuntime``, found through the ``factory_runtimes`` and ``factories_by_region``
indexes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import kopf

from factory_operator.api import GROUP, VERSION, FleetRegion, InferenceFactory
from factory_operator.api.errors import TransientError
from factory_operator.k8s import (
    Kube,
    LoadReader,
    OperatorMetrics,
    OwnWrites,
    Watched,
    load_api_client,
    node_info,
)
from factory_operator.k8s.economics import ECONOMICS_INTERVAL_SECONDS, TokenReader, economics_tick
from factory_operator.k8s.gates import judge_step
from factory_operator.k8s.slo import SloReader
from factory_operator.plan import NodeInfo, OperatorSettings, plan_region_status
from factory_operator.plan.rollout import GateReport
from factory_operator.plan.rollout_plan import GatesRequest

from .index import RegionRefreshes, changed_regions, regions_of_node
from .indexes import (
    BY_REGION_INDEX,
    FACTORIES,
    REGIONS,
    RUNTIMES_INDEX,
    WATCHABLE,
    FactoryRuntime,
    register_indexes,
    runtime,
    watched_view,
)
from .reconcile import reconcile_factory, utc_now

log = logging.getLogger(__name__)
MANAGED_BY = {"app.kubernetes.io/managed-by": "inference-factory"}


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
    settings: OperatorSettings,
    kube_factory: Callable[[], Kube],
    metrics: OperatorMetrics,
    watch: Collection[str] = tuple(WATCHABLE),
) -> kopf.OperatorRegistry:
    """A kopf registry with all of the operator's handlers bound to these settings.

    ``watch``: the kinds of ``indexes.WATCHABLE`` read from watches (the operator may watch
    them); the others are listed per reconcile."""
    registry = kopf.OperatorRegistry()
    register_indexes(registry, settings, watch)
    refreshes = RegionRefreshes()
    own = OwnWrites()
    op_settings = settings  # kopf passes its own settings under the name `settings`
    clients: dict[str, Kube] = {}

    def kube() -> Kube:
        if "kube" not in clients:
            clients["kube"] = kube_factory()
        return clients["kube"]

    loads = LoadReader(settings.prometheus_url) if settings.prometheus_url else None

    slos = SloReader(settings.prometheus_url) if settings.prometheus_url else None

    async def judge(factory: InferenceFactory, request: GatesRequest) -> GateReport:
        """A due step's gates (k8s.gates): golden prompts through the router, SLOs from
        Prometheus; what cannot be judged comes back inconclusive, never passed."""
        rollout = factory.spec.rollout
        if rollout is None:  # the plan asks for a judgement only under spec.rollout
            return GateReport(())
        results = await judge_step(
            namespace=factory.metadata.namespace or "default",
            factory=factory.metadata.name,
            model=factory.spec.model.name,
            rollout=rollout,
            step=request.step,
            pools=request.pools,
            settings=settings,
            kube=kube(),
            slo_reader=slos,
        )
        return GateReport(results)

    async def reconcile(
        body: Any,
        memo: Any,
        indexes: Mapping[str, Any],
        *,
        decide: bool = False,
        judging: bool = False,
    ) -> None:
        watched = watched_view(indexes, own)
        async with runtime(memo).lock:
            await reconcile_factory(
                kube(),
                body,
                settings,
                metrics,
                loads,
                decide=decide,
                watched=watched,
                judge=judge if judging else None,
            )

    def wake(runtimes: Any) -> int:
        for found in runtimes:
            found.wake.set()
        return len(runtimes)

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
    async def factory_changed(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
        await reconcile(body, memo, indexes)

    @kopf.daemon(
        GROUP, VERSION, FACTORIES, id="factory-resync", registry=registry, cancellation_timeout=5.0
    )
    async def factory_resync(
        body: kopf.Body,
        name: str,
        namespace: str | None,
        memo: kopf.Memo,
        stopped: kopf.DaemonStopped,
        **indexes: Any,
    ) -> None:
        state: FactoryRuntime = runtime(memo)
        try:
            while not stopped:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), timeout=settings.resync_seconds)
                state.wake.clear()
                if stopped:
                    break
                try:
                    await reconcile(body, memo, indexes)
                except (kopf.PermanentError, kopf.TemporaryError) as err:
                    log.warning("resync: %s", err, extra={"factory": name})
        finally:
            metrics.forget_factory(namespace or "", name)

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
        body: kopf.Body, name: str, memo: kopf.Memo, **indexes: Any
    ) -> None:
        try:
            await reconcile(body, memo, indexes, decide=True)
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            # The next tick is the retry: no backoff state for kopf to keep in annotations.
            log.warning("autoscale: %s", err, extra={"factory": name})

    def rolled_out(spec: kopf.Spec, **_: Any) -> bool:
        return spec.get("rollout") is not None

    # The rollout's clock: a step whose gates are due is judged here (k8s.gates), then
    # planned with the judgement; every other handler moves a rollout only where no
    # judgement is needed (a canary ready, a deadline passed, a pause, a promote).
    @kopf.timer(
        GROUP,
        VERSION,
        FACTORIES,
        id="factory-rollout",
        registry=registry,
        interval=settings.rollout_interval_seconds,
        when=rolled_out,
    )
    async def factory_rollout(body: kopf.Body, name: str, memo: kopf.Memo, **indexes: Any) -> None:
        try:
            await reconcile(body, memo, indexes, judging=True)
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            log.warning("rollout: %s", err, extra={"factory": name})

    tokens = TokenReader(settings.prometheus_url) if settings.prometheus_url else None

    # Unit economics (k8s.economics): the price and power gauges, and each pool's cost per
    # million tokens in status, at most once a minute; no other handler reads or writes them.
    @kopf.timer(
        GROUP,
        VERSION,
        FACTORIES,
        id="factory-economics",
        registry=registry,
        interval=ECONOMICS_INTERVAL_SECONDS,
    )
    async def factory_economics(
        body: kopf.Body, name: str, memo: kopf.Memo, **indexes: Any
    ) -> None:
        async with runtime(memo).lock:
            try:
                await economics_tick(kube(), body, watched_view(indexes, own), metrics, tokens)
            except TransientError as err:  # the next tick is the retry
                log.warning("economics: %s", err, extra={"factory": name})

    async def refresh_region(name: str, watched: Watched) -> None:
        """The region's status from the region and the nodes as the watches hold them;
        concurrent callers for one region share one refresh."""
        refreshes.mark_stale(name)
        async with refreshes.lock(name):
            if not refreshes.take_stale(name):
                return
            try:
                obj = watched.region_object(name)
                if obj is not None:
                    answer = await refresh_region_status(
                        kube(), region_model(obj), settings.node_label_scheme, watched.node_list()
                    )
                    if answer:
                        own.wrote(answer)
            except TransientError as err:
                refreshes.mark_stale(name)  # the next change or event tries again
                log.warning("region status: %s", err, extra={"region": name})

    def selectors(watched: Watched) -> dict[str, dict[str, str]]:
        return {
            (region := region_model(obj)).name: dict(region.spec.selector(region.name))
            for obj in watched.region_objects()
        }

    @kopf.on.event(GROUP, VERSION, REGIONS, id="region-changed", registry=registry)
    async def region_changed(name: str, type: str | None, **indexes: Any) -> None:
        if type != "DELETED":
            await refresh_region(name, watched_view(indexes, own))
        wake(indexes[BY_REGION_INDEX].get(name, ()))

    @kopf.on.event("", "v1", "nodes", id="node-changed", registry=registry)
    async def node_changed(
        body: kopf.Body, type: str | None, memo: kopf.Memo, **indexes: Any
    ) -> None:
        info = None if type == "DELETED" else node_info(dict(body))
        before: NodeInfo | None = memo.get("facts")
        memo["facts"] = info
        if before == info and not refreshes.any_stale:
            return  # a heartbeat
        watched = watched_view(indexes, own)
        known = selectors(watched)
        regions = changed_regions(before, info, known)
        if info is not None:
            regions |= refreshes.stale_among(regions_of_node(info.labels, known))
        for region in sorted(regions):
            await refresh_region(region, watched)
        by_region = indexes[BY_REGION_INDEX]
        for region in regions:
            wake(by_region.get(region, ()))

    @kopf.on.event(
        "apps", "v1", "deployments", id="child-changed", registry=registry, labels=MANAGED_BY
    )
    async def child_changed(body: kopf.Body, namespace: str | None, **indexes: Any) -> None:
        owner = (body.get("metadata", {}).get("labels") or {}).get(
            f"{settings.annotation_prefix}/factory"
        )
        if owner and namespace:
            wake(indexes[RUNTIMES_INDEX].get((namespace, owner), ()))

    return registry


def region_model(obj: Any) -> FleetRegion:
    return FleetRegion.model_validate(
        {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj}
    )


async def refresh_region_status(
    kube: Kube,
    region: FleetRegion,
    default_scheme: str = "gfd",
    nodes: list[NodeInfo] | None = None,
) -> dict[str, Any] | None:
    """Patch a FleetRegion's status from its nodes (listed when not given), only when it
    changed; returns the API server's answer to the patch, None when nothing was sent."""
    if nodes is None:
        nodes = [node_info(n) for n in await kube.list("v1", "Node")]
    status = plan_region_status(region, nodes, utc_now(), default_scheme)
    current = region.status.to_wire() if region.status else None
    if status.to_wire() == current:
        return None
    return await kube.patch_status(
        f"{GROUP}/{VERSION}", "FleetRegion", region.name, None, status.to_wire()
    )
