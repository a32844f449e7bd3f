"""The one gateway to the API server: a sync ``kubernetes`` dynamic client run in threads.

Every request has an explicit (connect, read) timeout from the settings, and every write
is counted in ``OperatorMetrics.api_writes``. API errors are translated into the operator's
error tree (``api.errors``): 404 -> None/ignored where absence is fine, 409 -> ConflictError,
429/5xx/connection errors -> ApiUnavailableError.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ConflictError as K8sConflict
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
from urllib3.exceptions import HTTPError

from factory_operator.api.errors import ApiUnavailableError, ConflictError
from factory_operator.plan import OperatorSettings

from .metrics import OperatorMetrics

FIELD_MANAGER = "inference-factory"
USER_AGENT = "factory-operator"
KIND_RECHECK_SECONDS = 60.0
T = TypeVar("T")
# The kubernetes package is untyped: keep it behind Any here, typed methods below.
_k8s: Any = kubernetes
Obj = dict[str, Any]


def load_api_client() -> Any:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    configuration = _k8s.client.Configuration()
    try:
        _k8s.config.load_incluster_config(client_configuration=configuration)
    except _k8s.config.ConfigException:
        # $KUBECONFIG is read now: the client library reads it once, when first imported.
        _k8s.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    api_client = _k8s.client.ApiClient(configuration)
    # A user agent of its own makes the operator's requests stand out in audit logs.
    api_client.user_agent = USER_AGENT
    return api_client


class Kube:
    """Async facade over the dynamic client (each call runs in a worker thread)."""

    def __init__(
        self, api_client: Any, settings: OperatorSettings, metrics: OperatorMetrics
    ) -> None:
        self.dynamic: Any = _k8s.dynamic.DynamicClient(api_client)
        self._resources_lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._probe_lock = asyncio.Lock()
        self.settings = settings
        self.metrics = metrics
        self.timeout = (settings.api_connect_timeout_seconds, settings.api_timeout_seconds)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except K8sConflict as err:
            raise ConflictError(str(err)) from err
        except ApiException as err:
            if err.status in (429, 500, 502, 503, 504):
                raise ApiUnavailableError(f"API server answered {err.status}") from err
            raise
        except HTTPError as err:
            raise ApiUnavailableError(str(err)) from err

    def _resource(self, api_version: str, kind: str) -> Any:
        # The dynamic client's discovery cache is not thread-safe (concurrent look-ups from
        # worker threads corrupt it: KeyError 'resources'), so look-ups are serialised and
        # their results kept.
        key = (api_version, kind)
        with self._resources_lock:
            if key not in self._resources:
                self._resources[key] = self.dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return self._resources[key]

    @staticmethod
    def _plain(answer: Any) -> Obj:
        return dict(answer.to_dict()) if answer is not None else {}

    async def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. the PodMonitor CRD is installed).

        A miss makes the dynamic client re-run the whole discovery, so a "no" is kept for
        `KIND_RECHECK_SECONDS` before asking again (a CRD installed later is seen then).
        """
        key = (api_version, kind)
        if key in self._resources:
            return True  # found before: kept by _resource, no request
        # One probe at a time: concurrent reconciles would each re-run the whole discovery.
        async with self._probe_lock:
            missed_at = self._missing.get(key)
            if missed_at is not None and time.monotonic() - missed_at < KIND_RECHECK_SECONDS:
                return False

            def probe() -> bool:
                try:
                    self._resource(api_version, kind)
                except ResourceNotFoundError:
                    return False
                return True

            self.metrics.api_reads.labels(kind="Discovery").inc()
            found = await self._call(probe)
            if found:
                self._missing.pop(key, None)
            else:
                self._missing[key] = time.monotonic()
            return found

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        """Items of a kind as plain dicts."""

        def run() -> list[Obj]:
            res = self._resource(api_version, kind)
            out = self.dynamic.get(
                res,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                _request_timeout=self.timeout,
            )
            return [item.to_dict() for item in out.items]

        self.metrics.api_reads.labels(kind=kind).inc()
        return await self._call(run)

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        """One object, or None when it does not exist."""

        def run() -> Obj | None:
            try:
                obj = self.dynamic.get(
                    self._resource(api_version, kind),
                    name=name,
                    namespace=namespace,
                    _request_timeout=self.timeout,
                )
            except NotFoundError:
                return None
            return dict(obj.to_dict())

        self.metrics.api_reads.labels(kind=kind).inc()
        return await self._call(run)

    async def apply(self, manifest: Obj, field_manager: str = FIELD_MANAGER) -> Obj:
        """Server-side apply under the operator's field manager; force takes back our fields
        from a concurrent writer instead of failing on the conflict. Returns the object as
        the API server stored it."""
        meta = manifest["metadata"]

        def run() -> Obj:
            return self._plain(
                self.dynamic.server_side_apply(
                    self._resource(manifest["apiVersion"], manifest["kind"]),
                    body=manifest,
                    name=meta["name"],
                    namespace=meta.get("namespace"),
                    field_manager=field_manager,
                    force_conflicts=True,
                    _request_timeout=self.timeout,
                )
            )

        self.metrics.api_writes.labels(verb="apply", kind=manifest["kind"]).inc()
        return await self._call(run)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        """Delete (foreground-free, background propagation); absent is fine."""

        def run() -> None:
            try:
                self.dynamic.delete(
                    self._resource(api_version, kind),
                    name=name,
                    namespace=namespace,
                    body={"propagationPolicy": "Background"},
                    _request_timeout=self.timeout,
                )
            except NotFoundError:
                return

        self.metrics.api_writes.labels(verb="delete", kind=kind).inc()
        await self._call(run)

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: Obj
    ) -> Obj:
        """Merge-patch the status subresource (lists such as conditions are replaced whole).
        Returns the object as the API server stored it."""

        def run() -> Obj:
            res = self._resource(api_version, kind)
            return self._plain(
                self.dynamic.patch(
                    res.subresources["status"],
                    body={"status": status},
                    name=name,
                    namespace=namespace,
                    content_type="application/merge-patch+json",
                    _request_timeout=self.timeout,
                )
            )

        self.metrics.api_writes.labels(verb="patch-status", kind=kind).inc()
        return await self._call(run)

    async def create_event(self, event: Obj) -> None:
        """Record a core/v1 Event."""

        def run() -> None:
            self.dynamic.create(
                self._resource("v1", "Event"),
                body=event,
                namespace=event["metadata"]["namespace"],
                _request_timeout=self.timeout,
            )

        self.metrics.api_writes.labels(verb="create", kind="Event").inc()
        await self._call(run)


def may_watch(api_client: Any, group: str, resource: str, namespaces: list[str]) -> bool:
    """Whether the operator's credentials may list and watch a resource (everywhere, or in
    each of ``namespaces``): SelfSubjectAccessReviews, which every authenticated client may
    create. A failed review counts as no."""
    api = _k8s.client.AuthorizationV1Api(api_client)
    scopes: list[str | None] = [*namespaces] if namespaces else [None]
    for namespace in scopes:
        for verb in ("list", "watch"):
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {
                    "group": group, "resource": resource, "verb": verb, "namespace": namespace,
                }},
            }  # fmt: skip
            try:
                answer = api.create_self_subject_access_review(review, _request_timeout=10)
            except (ApiException, HTTPError):
                return False
            if not answer.status.allowed:
                return False
    return True
