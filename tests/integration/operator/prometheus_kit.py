"""A real Prometheus for the autoscaler's integration tests, scraping a small metrics page
that the test serves and sets (``LoadPage``): the load of each pool, in vLLM's own metric
names with the project's label set, as the engines' PodMonitor would have it.

Debian's ``prometheus`` binary, scraping every second (as the local fleet does), bound to
127.0.0.1 on free ports, its data in a temporary directory; one per session. Tests set a
pool's load and wait for the operator's outcome (never for Prometheus itself)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.support.waiting import wait_until

START_TIMEOUT = 60.0  # Prometheus 2.x on 2 shared cores: a few seconds, minutes never
STOP_TIMEOUT = 20.0
SIGNALS = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv": "vllm:kv_cache_usage_perc",
}


@dataclass(frozen=True)
class PoolKey:
    """One pool: the labels its engines' series carry."""

    namespace: str
    factory: str
    pool: str


class LoadPage:
    """A /metrics page whose values the test sets, served from a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[PoolKey, dict[str, float]] = {}
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return  # one line per scrape would drown the test log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """host:port of the page."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)

    def set(self, key: PoolKey, **signals: float) -> None:
        """Set a pool's load (running, waiting, kv); unset signals keep their value."""
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}")
        with self._lock:
            self._values.setdefault(key, {}).update(signals)

    def render(self) -> str:
        lines = []
        with self._lock:
            values = {k: dict(v) for k, v in self._values.items()}
        for signal, metric in SIGNALS.items():
            lines.append(f"# TYPE {metric} gauge")
            for key, pool_values in sorted(values.items(), key=lambda kv: repr(kv[0])):
                if signal in pool_values:
                    labels = (
                        f'namespace="{key.namespace}",factory="{key.factory}",'
                        f'pool="{key.pool}",model_name="m",engine="0"'
                    )
                    lines.append(f"{metric}{{{labels}}} {pool_values[signal]}")
        return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class LoadSource:
    """The running Prometheus and the page it scrapes."""

    url: str
    page: LoadPage


@contextmanager
def prometheus_scraping_a_load_page() -> Iterator[LoadSource]:
    """Start the page and a Prometheus scraping it every second; stop both at the end."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing (Debian package prometheus)")
    page = LoadPage()
    page.start()
    home = Path(tempfile.mkdtemp(prefix="autoscaler-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "engines",
                "honor_labels": True,  # the page's namespace/factory/pool, as relabelled pods'
                "static_configs": [{"targets": [page.address]}],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: process.poll() is not None or _ready(url), START_TIMEOUT,
                   interval=0.2, what="Prometheus ready")  # fmt: skip
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(home / 'prometheus.log').read_text()}")
        yield LoadSource(url, page)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        log.close()
        page.stop()
        shutil.rmtree(home, ignore_errors=True)
