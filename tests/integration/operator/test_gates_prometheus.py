"""The rollout gates' SLO reading against a real Prometheus: the router's per-revision series
(``factory_contract.metrics``) served by prometheus_client on 127.0.0.1 as steady traffic per
pool and revision, scraped every second; ``judge_step`` (its default ``SloReader`` from
``--prometheus-url``) passes a canary like its stable revision and fails a 3x slower one and
a 5%-erroring one with their numbers; Prometheus down or silent is inconclusive.

The page's counters grow with the clock (rate x elapsed), so every window holds the same
rates whenever Prometheus is read: the test waits for enough samples, never for time.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from factory_contract.metrics import (
    BACKEND_ATTEMPTS,
    BACKEND_COMPLETION_TOKENS,
    BACKEND_ITL_SECONDS,
    BACKEND_STREAM_SECONDS,
    BACKEND_TTFT_SECONDS,
)
from factory_operator.api.rollout import GateResult, Rollout, RolloutStep
from factory_operator.k8s.gates import judge_step
from factory_operator.k8s.slo import SloReader
from factory_operator.plan.settings import OperatorSettings
from tests.integration.operator.prometheus_kit import START_TIMEOUT, STOP_TIMEOUT, free_port
from tests.support.waiting import async_wait_until, wait_until

NAMESPACE, FACTORY = "ml", "llama"
STABLE, CANARY = "stable1", "canary1"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
DATA_TIMEOUT = 60.0


@dataclass(frozen=True)
class Traffic:
    """Per second: answered and failed attempts, tokens and seconds of streaming; every TTFT
    and ITL observation at one value."""

    ok: float = 19.0
    errors: float = 0.0
    ttft: float = 0.08  # in (0.05, 0.1]: p95 = 0.05 + 0.95 x 0.05 = 0.0975
    itl: float = 0.008  # in (0.005, 0.01]: p95 = 0.00975
    tokens: float = 400.0
    stream_seconds: float = 4.0  # 100 tokens per second of streaming


def p95(value: float) -> float:
    """histogram_quantile(0.95) of observations all equal to ``value`` in BUCKETS."""
    upper = next(b for b in BUCKETS if value <= b)
    lower = max((b for b in BUCKETS if b < upper), default=0.0)
    return lower + 0.95 * (upper - lower)


SLOW = Traffic(ttft=0.24, itl=0.024, stream_seconds=12.0)  # 3x
ERRORING = Traffic(ok=19.0, errors=1.0)  # 5%
TRAFFIC = {
    (FACTORY, "good", STABLE): Traffic(),
    (FACTORY, "good", CANARY): Traffic(),
    (FACTORY, "slow", STABLE): Traffic(),
    (FACTORY, "slow", CANARY): SLOW,
    (FACTORY, "erroring", STABLE): Traffic(),
    (FACTORY, "erroring", CANARY): ERRORING,
    ("other", "good", CANARY): Traffic(errors=1000.0, ttft=0.9),  # another factory's
}


class RouterSeries(Collector):
    """The router's per-revision series for TRAFFIC, grown with the clock."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        elapsed = time.monotonic() - self.started
        labels = ["namespace", "factory", "pool", "revision"]
        attempts = CounterMetricFamily(BACKEND_ATTEMPTS.removesuffix("_total"), "attempts",
                                       labels=[*labels, "outcome"])  # fmt: skip
        tokens = CounterMetricFamily(BACKEND_COMPLETION_TOKENS.removesuffix("_total"), "tokens",
                                     labels=labels)  # fmt: skip
        stream = CounterMetricFamily(BACKEND_STREAM_SECONDS.removesuffix("_total"), "stream",
                                     labels=labels)  # fmt: skip
        ttft = HistogramMetricFamily(BACKEND_TTFT_SECONDS, "ttft", labels=labels)
        itl = HistogramMetricFamily(BACKEND_ITL_SECONDS, "itl", labels=labels)
        for (factory, pool, revision), t in TRAFFIC.items():
            values = [NAMESPACE, factory, pool, revision]
            answered = t.ok * elapsed
            attempts.add_metric([*values, "ok"], answered)
            attempts.add_metric([*values, "error"], t.errors * elapsed)
            tokens.add_metric(values, t.tokens * elapsed)
            stream.add_metric(values, t.stream_seconds * elapsed)
            for family, value in ((ttft, t.ttft), (itl, t.itl)):
                buckets = [(str(b), answered if value <= b else 0.0) for b in BUCKETS]
                family.add_metric(values, [*buckets, ("+Inf", answered)], answered * value)
        yield from (attempts, tokens, stream, ttft, itl)


@contextmanager
def prometheus_scraping(target: str) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every second (as prometheus_kit's, for any page);
    its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing (Debian package prometheus)")
    home = Path(tempfile.mkdtemp(prefix="gates-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "router", "honor_labels": True,
                            "static_configs": [{"targets": [target]}]}],
    }  # fmt: skip
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
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    registry = CollectorRegistry()
    registry.register(RouterSeries())
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with prometheus_scraping(f"127.0.0.1:{server.server_port}") as url:
            yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT)


STEP = RolloutStep(weight=10, pause_seconds=10)
WAVE = [("good", CANARY, STABLE), ("slow", CANARY, STABLE), ("erroring", CANARY, STABLE)]


async def judged(
    settings: OperatorSettings, slo_reader: SloReader | None = None
) -> dict[tuple[str, str], GateResult]:
    results = await judge_step(
        namespace=NAMESPACE, factory=FACTORY, model="m", rollout=Rollout(), step=STEP,
        pools=WAVE, settings=settings, kube=NoConfigMaps(), slo_reader=slo_reader,
    )  # fmt: skip
    return {(r.pool, r.check): r for r in results}


class NoConfigMaps:
    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        raise AssertionError("no golden prompts: no ConfigMap is read")


async def test_a_good_canary_passes_a_slow_and_an_erroring_one_fail_with_their_numbers(
    prometheus: str,
) -> None:
    settings = OperatorSettings(prometheus_url=prometheus)

    async def all_judged() -> dict[tuple[str, str], GateResult] | None:
        # Until every pool has its 20 canary requests and both p95s in the window.
        results = await judged(settings)
        return results if all(r.passed is not None for r in results.values()) else None

    results = await async_wait_until(all_judged, DATA_TIMEOUT, interval=0.5,
                                     what="every SLO conclusive")  # fmt: skip
    assert len(results) == 12
    for check in ("ErrorRatio", "TtftP95", "ItlP95", "Throughput"):
        assert results["good", check].passed is True, results["good", check]
    good_ttft = results["good", "TtftP95"]
    assert good_ttft.value == pytest.approx(p95(0.08))
    assert good_ttft.baseline == pytest.approx(p95(0.08))
    assert good_ttft.threshold == pytest.approx(p95(0.08) * 1.5)
    assert results["good", "Throughput"].value == pytest.approx(100.0, rel=1e-3)

    ttft, itl = results["slow", "TtftP95"], results["slow", "ItlP95"]
    assert (ttft.passed, itl.passed) == (False, False)
    assert ttft.value == pytest.approx(p95(0.24)) and ttft.baseline == pytest.approx(p95(0.08))
    assert itl.value == pytest.approx(p95(0.024)) and itl.baseline == pytest.approx(p95(0.008))
    assert "295.0 ms" in ttft.message and "97.5 ms" in ttft.message
    throughput = results["slow", "Throughput"]
    assert throughput.passed is False and throughput.value == pytest.approx(100 / 3, rel=1e-3)
    assert results["slow", "ErrorRatio"].passed is True

    errors = results["erroring", "ErrorRatio"]
    assert errors.passed is False
    assert errors.value == pytest.approx(0.05, rel=1e-3) and errors.baseline == 0.0
    assert "5.00%" in errors.message
    assert [results["erroring", c].passed for c in ("TtftP95", "ItlP95", "Throughput")] == [
        True,
        True,
        True,
    ]


async def test_prometheus_down_or_silent_is_inconclusive() -> None:
    down = await judged(OperatorSettings(prometheus_url=f"http://127.0.0.1:{free_port()}"))
    assert len(down) == 12 and all(r.passed is None for r in down.values())
    assert all("did not answer" in r.message for r in down.values())

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        results = await judged(OperatorSettings(), slo_reader=SloReader(url, timeout=0.5))
        assert time.monotonic() - started < 5
    assert all(r.passed is None and "did not answer" in r.message for r in results.values())
