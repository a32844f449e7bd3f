"""Admin targeting and the per-revision series (clients' requests only) end to end: a real
router process in front of two real simulator engines (`factory-sim serve`) of one pool, one
per revision (the canary answers under another `answer_seed`, as a new revision whose
answers differ would).

The static backends file names each engine's namespace, factory, pool and revision, as
Kubernetes discovery reads them from the pods (the split itself, which needs a canary in a
factory's status, is proven on `fleet_from_objects` in tests/unit/router/test_canary.py).
No cluster is needed; everything binds 127.0.0.1 and is stopped by the fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from factory_router.policy.tenants import hash_key
from factoryctl.home import free_port
from tests.integration.router.processes import metric_sum, stop_process
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
OPS_KEY, ACME_KEY = "sk-canary-ops-0001", "sk-canary-acme-0001"
TENANTS = {
    "admin_keys_sha256": [hash_key("sk-canary-admin")],
    "tenants": [
        {"name": "ops", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key(OPS_KEY)],
         "admin": True},
        {"name": "acme", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key(ACME_KEY)]},
    ],
}  # fmt: skip
REVISIONS = {"stable": "aaaaaaaaaa", "canary": "bbbbbbbbbb"}
SEEDS = {"stable": "", "canary": "v2"}
START_SECONDS = 60
MESSAGES = [{"role": "user", "content": "name three rivers of europe"}]


@dataclass
class Fleet:
    router_url: str
    admin_url: str
    control_url: str
    engines: dict[str, str]  # name -> URL

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def received(self, name: str) -> int:
        listed = httpx.get(self.control_url + "/engines", timeout=5).json()["engines"]
        return int(next(e for e in listed if e["id"] == name)["requests"]["received"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("canary")
    engines = [
        {"model_name": "llama", "profile": "h100", "name": name, "region": "eu-west-1",
         "time_scale": 0.05, "behaviour": {"answer_seed": SEEDS[name]}}
        for name in REVISIONS
    ]  # fmt: skip
    (home / "engines.yaml").write_text(json.dumps({"engines": engines}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "router"), str(ROOT / "sim")])}
    sim = subprocess.Popen(
        [sys.executable, "-m", "factory_sim.main", "serve", "--control-port", "0",
         "--config", str(home / "engines.yaml")],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    router: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        urls = {e["id"]: e["url"] for e in ready["engines"]}
        (home / "tenants.yaml").write_text(json.dumps(TENANTS))
        backends = [
            {"model": "llama", "pool": "eu", "factory": "llama", "namespace": "ml",
             "region": "eu-west-1", "url": urls[name], "pod": name, "revision": revision}
            for name, revision in REVISIONS.items()
        ]  # fmt: skip
        (home / "backends.yaml").write_text(
            json.dumps(
                {"regions": [{"name": "eu-west-1", "jurisdiction": "EU"}], "backends": backends}
            )
        )
        listen, admin = free_port(), free_port()
        router = subprocess.Popen(
            [sys.executable, "-m", "factory_router.main",
             "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}",
             "--region", "eu-west-1", "--tenants", str(home / "tenants.yaml"),
             "--backends", str(home / "backends.yaml"), "--probe-interval", "0",
             "--log-level", "WARNING", "--no-access-log"],
            env=env,
        )  # fmt: skip
        result = Fleet(
            f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", ready["control_url"], urls
        )

        def router_ready() -> bool:
            try:
                return httpx.get(result.router_url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(router_ready, timeout=START_SECONDS, interval=0.2, what="router ready")
        yield result
    finally:
        if router is not None:
            stop_process(router)
        stop_process(sim)
        if sim.stdout is not None:
            sim.stdout.close()


def _greedy(base_url: str, key: str, target: str | None = None) -> str:
    headers = {"x-factory-target": target} if target else {}
    with openai.OpenAI(
        base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=60, default_headers=headers
    ) as client:
        chat = client.chat.completions.create(
            model="llama",
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,  # type: ignore[arg-type]
        )
    return chat.choices[0].message.content or ""


def _stream(fleet: Fleet, key: str, target: str | None = None) -> tuple[str, int]:
    headers = {"x-factory-target": target} if target else {}
    with openai.OpenAI(
        base_url=fleet.router_url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=60,
        default_headers=headers,
    ) as client:
        stream = client.chat.completions.create(
            model="llama",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=9,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, usage.completion_tokens


def _series(text: str, name: str, revision: str, *more: str) -> float:
    where = ('namespace="ml"', 'factory="llama"', 'pool="eu"', f'revision="{revision}"')
    return metric_sum(text, name, *where, *more)


SERIES = (
    "factory_router_backend_attempts_total",
    "factory_router_backend_ttft_seconds_count",
    "factory_router_backend_itl_seconds_count",
    "factory_router_backend_completion_tokens_total",
    "factory_router_backend_stream_seconds_total",
)


def _all_series(fleet: Fleet) -> dict[tuple[str, str], float]:
    text = fleet.metrics()
    return {(n, r): _series(text, n, r) for n in SERIES for r in REVISIONS.values()}


def test_admin_targeting_reaches_that_revision_and_is_not_counted(fleet: Fleet) -> None:
    direct = {name: _greedy(url, "unused") for name, url in fleet.engines.items()}
    assert direct["stable"] != direct["canary"]  # the revisions answer otherwise
    received = {name: fleet.received(name) for name in REVISIONS}
    before = _all_series(fleet)
    for name, revision in REVISIONS.items():
        target = f"ml/llama/eu@{revision}"
        assert _greedy(fleet.router_url, OPS_KEY, target) == direct[name]
        for _ in range(3):
            text, completion = _stream(fleet, OPS_KEY, target)
            assert text == direct[name][: len(text)] and completion > 0
    # Every targeted request reached its revision's engine, none the other's.
    assert {name: fleet.received(name) - received[name] for name in REVISIONS} == {
        "stable": 4,
        "canary": 4,
    }
    # The operator's golden prompts are no client's: the gates' series did not move.
    assert _all_series(fleet) == before


def test_clients_requests_count_in_the_series_of_the_revision_that_served_them(
    fleet: Fleet,
) -> None:
    received = {name: fleet.received(name) for name in REVISIONS}
    before = _all_series(fleet)
    text = fleet.metrics()
    ok_before = {r: _series(text, SERIES[0], r, 'outcome="ok"') for r in REVISIONS.values()}
    tokens = 0
    for _ in range(8):
        text, completion = _stream(fleet, ACME_KEY)
        assert text and completion > 0
        tokens += completion
    served = {name: fleet.received(name) - received[name] for name in REVISIONS}
    assert sum(served.values()) == 8
    after = _all_series(fleet)

    def moved(name: str, revision: str) -> float:
        return after[(name, revision)] - before[(name, revision)]

    text = fleet.metrics()
    for name, revision in REVISIONS.items():
        ok = _series(text, SERIES[0], revision, 'outcome="ok"')
        assert ok - ok_before[revision] == served[name]  # one ok attempt each
        assert moved(SERIES[1], revision) == served[name]  # one TTFT per stream
    assert sum(moved(SERIES[3], r) for r in REVISIONS.values()) == tokens
    itl = sum(moved(SERIES[2], r) for r in REVISIONS.values())
    assert itl == tokens - 8, (itl, tokens)  # one token per event, gaps after the first
    assert sum(moved(SERIES[4], r) for r in REVISIONS.values()) > 0


def test_a_failing_attempt_counts_as_an_error_of_its_revision(fleet: Fleet) -> None:
    text = fleet.metrics()
    error = ("factory_router_backend_attempts_total", 'outcome="error"')
    before = {r: _series(text, error[0], r, error[1]) for r in REVISIONS.values()}
    fault = {"error_status": 500, "error_count": 1}
    httpx.put(
        f"{fleet.control_url}/engines/canary/faults", json=fault, timeout=5
    ).raise_for_status()
    received = fleet.received("canary")
    try:
        for _ in range(40):  # a client's requests until one is sent to the canary
            reply = httpx.post(
                fleet.router_url + "/v1/chat/completions",
                json={"model": "llama", "messages": MESSAGES, "max_tokens": 4},
                headers={"authorization": f"Bearer {ACME_KEY}"},
                timeout=30,
            )
            assert reply.status_code == 200  # a 500 there fails over to the stable revision
            if fleet.received("canary") > received:
                break
    finally:
        httpx.delete(f"{fleet.control_url}/engines/canary/faults", timeout=5)
    assert fleet.received("canary") == received + 1
    text = fleet.metrics()
    after = {r: _series(text, error[0], r, error[1]) for r in REVISIONS.values()}
    assert after[REVISIONS["canary"]] - before[REVISIONS["canary"]] == 1
    assert after[REVISIONS["stable"]] == before[REVISIONS["stable"]]


def test_the_target_header_is_refused_to_tenants_without_admin(fleet: Fleet) -> None:
    received = {name: fleet.received(name) for name in REVISIONS}
    body = {"model": "llama", "messages": MESSAGES, "max_tokens": 4}
    for key, target, status, code in (
        (ACME_KEY, "ml/llama/eu@bbbbbbbbbb", 403, "target_not_allowed"),
        (ACME_KEY, "???", 403, "target_not_allowed"),
        (OPS_KEY, "ml/llama", 400, "invalid_target"),
        (OPS_KEY, "ml/llama/us", 503, "no_compliant_backend"),
    ):
        reply = httpx.post(
            fleet.router_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}", "x-factory-target": target},
            timeout=30,
        )
        assert reply.status_code == status, reply.text
        assert reply.json()["error"]["code"] == code
    assert {name: fleet.received(name) for name in REVISIONS} == received
    # Without the header the tenant is served as before.
    assert _greedy(fleet.router_url, ACME_KEY) in set(
        {_greedy(url, "unused") for url in fleet.engines.values()}
    )
