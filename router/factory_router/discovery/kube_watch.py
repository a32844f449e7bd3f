"""Keep a Fleet current from the Kubernetes API with list+watch (official client, threads).

One daemon thread per kind lists, then watches from the list's resourceVersion; on any
error (410 Gone, connection loss) it relists after a capped backoff. Every change is
applied to a `KubeCache` under a lock and a rebuild is scheduled on the event loop, where
the new Fleet is handed to `on_fleet` (coalesced: a burst of events is one rebuild).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes

from factory_contract import names
from factory_router.discovery.kube import MANAGED_BY_SELECTOR, KubeCache
from factory_router.policy.fleet import Fleet, RttMatrix

# The client's own annotations are partial; it is used through these untyped handles.
client: Any = kubernetes.client
config: Any = kubernetes.config
watch: Any = kubernetes.watch

log = logging.getLogger("factory_router.discovery.kube")

GROUP, VERSION = names.GROUP, names.VERSION
WATCH_TIMEOUT_SECONDS = 300  # server-side; the watch is re-established after it
BACKOFF_MAX_SECONDS = 30.0


class KubeWatcher:
    def __init__(
        self,
        on_fleet: Callable[[Fleet], None],
        *,
        kubeconfig: str | None = None,
        rtt: RttMatrix | None = None,
        local_region: str | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self.on_fleet = on_fleet
        self.kubeconfig = kubeconfig
        self.rtt = rtt
        self.local_region = local_region
        self.request_timeout = request_timeout
        self.cache = KubeCache()
        self.synced: set[str] = set()
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False

    def _listers(self) -> dict[str, tuple[Callable[..., Any], dict[str, Any]]]:
        if self.kubeconfig:
            config.load_kube_config(config_file=self.kubeconfig)
        else:
            config.load_incluster_config()
        custom = client.CustomObjectsApi()
        return {
            "regions": (
                custom.list_cluster_custom_object,
                {"group": GROUP, "version": VERSION, "plural": names.REGION_PLURAL},
            ),
            "factories": (
                custom.list_cluster_custom_object,
                {"group": GROUP, "version": VERSION, "plural": names.FACTORY_PLURAL},
            ),
            "slices": (
                client.DiscoveryV1Api().list_endpoint_slice_for_all_namespaces,
                {"label_selector": MANAGED_BY_SELECTOR},
            ),
            "pods": (
                client.CoreV1Api().list_pod_for_all_namespaces,
                {"label_selector": MANAGED_BY_SELECTOR},
            ),
        }

    async def run(self) -> None:
        """Start the watch threads and wait until cancelled."""
        self._loop = asyncio.get_running_loop()
        listers = await asyncio.to_thread(self._listers)
        threads = [
            threading.Thread(
                target=self._watch, args=(kind, fn, kw), daemon=True, name=f"kube-watch-{kind}"
            )
            for kind, (fn, kw) in listers.items()
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()

    def _watch(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        sanitize = client.ApiClient().sanitize_for_serialization
        backoff = 0.5
        while not self._stop.is_set():
            try:
                listed = sanitize(fn(**kwargs, _request_timeout=self.request_timeout))
                with self._lock:
                    self.cache.replace(kind, listed.get("items") or [])
                    self.synced.add(kind)
                self._schedule()
                version = (listed.get("metadata") or {}).get("resourceVersion")
                w = watch.Watch()
                for event in w.stream(
                    fn,
                    **kwargs,
                    resource_version=version,
                    timeout_seconds=WATCH_TIMEOUT_SECONDS,
                    allow_watch_bookmarks=True,
                ):
                    if self._stop.is_set():
                        w.stop()
                        return
                    obj = sanitize(event["object"])
                    with self._lock:
                        changed = self.cache.apply(kind, event["type"], obj)
                    if changed:
                        self._schedule()
                backoff = 0.5
            except Exception as exc:  # relist on anything, after a capped backoff
                self.last_error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
                log.warning("kubernetes watch of %s failed, relisting: %s", kind, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _schedule(self) -> None:
        if self._loop is None or self._pending:
            return
        self._pending = True
        self._loop.call_soon_threadsafe(self._rebuild)

    def _rebuild(self) -> None:
        self._pending = False
        if len(self.synced) < 4:
            return  # publish only once every kind was listed: no partial fleet
        with self._lock:
            fleet = self.cache.fleet(self.rtt, self.local_region)
        self.on_fleet(fleet)
