"""Quotas, the pure parts (`factory_router.quota.buckets`) and the service's fallback: token
buckets admit at most capacity + rate x T, a refused request takes nothing and is told when
it fits, settling gives back the unused reservation, the estimate is the worst case, the
429 has OpenAI's shape and headers; a Redis that refuses connections means per-replica
limits at once (no error to the client), and a tenant without quotas costs no Redis call."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from factory_router.metering.usage import Usage
from factory_router.policy.errors import PolicyError
from factory_router.policy.tenants import Tenant, parse_tenants
from factory_router.quota.buckets import (
    PROMPT_BYTES_PER_TOKEN,
    Bucket,
    LocalBuckets,
    QuotaExceeded,
    buckets_of,
    duration,
    estimate,
    exceeded,
    rate_limit_headers,
)
from factory_router.quota.service import QuotaConfig, QuotaService, used_tokens

TPM = Bucket("tokens_per_minute", 600.0, 10.0)
RPM = Bucket("requests_per_minute", 60.0, 1.0)


def test_a_bucket_admits_capacity_then_its_rate_and_nothing_more() -> None:
    local = LocalBuckets()
    admitted, now = 0, 0.0
    while now <= 30.0:  # 30 s of requests of 50 tokens every 0.1 s
        if local.take(["t"], [TPM], [50], now).admitted:
            admitted += 50
        now += 0.1
    assert admitted <= 600 + 10 * 30
    assert admitted >= 600 + 10 * 30 - 50  # never idle while a request fits


def test_a_refused_request_takes_nothing_and_is_told_when_it_fits() -> None:
    local = LocalBuckets()
    assert local.take(["t"], [TPM], [550], 0.0).admitted
    refused = local.take(["t"], [TPM], [100], 0.0)
    assert not refused.admitted
    assert refused.levels == (50.0,)
    assert refused.wait == pytest.approx(5.0)  # 50 missing at 10/s
    assert not local.take(["t"], [TPM], [100], 4.9).admitted
    assert local.take(["t"], [TPM], [100], 5.0).admitted


def test_every_bucket_must_hold_its_cost_and_all_are_taken_at_once() -> None:
    local = LocalBuckets()
    keys, both = ["r", "t"], [RPM, TPM]
    assert local.take(keys, both, [1, 600], 0.0).admitted
    refused = local.take(keys, both, [1, 10], 0.0)  # requests left, tokens not
    assert not refused.admitted and refused.levels == (59.0, 0.0)
    assert local.take(["r"], [RPM], [1], 0.0).levels == (58.0,)  # nothing taken by the refusal


def test_settle_gives_back_the_unused_reservation_and_takes_an_excess() -> None:
    local = LocalBuckets()
    local.take(["t"], [TPM], [500], 0.0)
    local.give("t", TPM, 400, 0.0)  # used 100 of 500
    assert local.take(["t"], [TPM], [500], 0.0).admitted
    local.give("t", TPM, -300, 0.0)  # used 300 more than reserved: a debt
    refused = local.take(["t"], [TPM], [1], 0.0)
    assert refused.levels == (-300.0,)
    local.give("t", TPM, 10_000, 0.0)
    assert local.take(["t"], [TPM], [0], 0.0).levels == (600.0,)  # never above capacity


def test_the_estimate_is_the_worst_case() -> None:
    body = 400
    prompt = math.ceil(body / PROMPT_BYTES_PER_TOKEN)
    assert estimate({"max_tokens": 50}, body, completes=True, default=1024).total == prompt + 50
    both = {"max_tokens": 50, "max_completion_tokens": 70, "n": 2}
    assert estimate(both, body, completes=True, default=1024).completion == 140
    assert estimate({}, body, completes=True, default=1024).completion == 1024
    for bad in ({"max_tokens": "9"}, {"max_tokens": True}, {"max_tokens": -1}):
        assert estimate(bad, body, completes=True, default=7).completion == 7
    assert estimate({"max_tokens": 50}, body, completes=False, default=1024).completion == 0


def test_limits_become_buckets_divided_by_the_replicas() -> None:
    limits = {"requests_per_minute": 60, "tokens_per_minute": None, "tokens_per_day": 86400}
    rpm, tpd = buckets_of(limits, divisor=2)  # type: ignore[arg-type]
    assert (rpm.name, rpm.capacity, rpm.per_second) == ("requests_per_minute", 30.0, 0.5)
    assert (tpd.name, tpd.capacity, tpd.per_second) == ("tokens_per_day", 43200.0, 0.5)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0201, "21ms"), (1.5, "1.5s"), (60, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_durations_read_as_openais(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_429_has_openais_shape_retry_after_and_headers() -> None:
    local = LocalBuckets()
    local.take(["r", "t"], [RPM, TPM], [1, 580], 0.0)
    verdict = local.take(["r", "t"], [RPM, TPM], [1, 100], 0.0)
    err = exceeded("acme", [RPM, TPM], verdict, [1, 100], scope="")
    assert isinstance(err, QuotaExceeded) and err.status == 429
    assert err.retry_after == 8  # 80 missing at 10/s
    body = err.body()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "tokens"
    assert "tokens per minute (TPM)" in body["message"] and "acme" in body["message"]
    assert err.headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "20",
        "x-ratelimit-reset-tokens": "58s",
    }


def test_the_tokens_headers_show_the_tightest_tokens_limit() -> None:
    tpd = Bucket("tokens_per_day", 1000.0, 1000 / 86400)
    headers = rate_limit_headers([TPM, tpd], [500.0, 100.0])
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "100"


def test_the_tenants_file_takes_quotas_and_refuses_bad_ones() -> None:
    doc = {
        "admin_keys_sha256": ["a" * 64],
        "tenants": [
            {
                "name": "t",
                "jurisdictions": ["EU"],
                "api_keys_sha256": ["b" * 64],
                "requests_per_minute": 10,
                "tokens_per_minute": 1000,
                "tokens_per_day": 10_000,
            }
        ],
    }
    tenant = parse_tenants(doc).tenants["t"]
    assert (tenant.requests_per_minute, tenant.tokens_per_minute, tenant.tokens_per_day) == (
        10,
        1000,
        10_000,
    )
    doc["tenants"][0]["tokens_per_minute"] = 0  # type: ignore[index]
    with pytest.raises(PolicyError):
        parse_tenants(doc)


async def test_used_tokens_counts_the_estimated_prompt_when_the_engine_gave_none() -> None:
    service = QuotaService(QuotaConfig())
    tenant = Tenant("t", frozenset({"EU"}), tokens_per_minute=10_000)
    ticket = await service.admit(tenant, {"max_tokens": 10}, 40, completes=True)
    assert ticket is not None and ticket.estimate.prompt == 10
    assert used_tokens(ticket, None) == 0
    assert used_tokens(ticket, Usage(7, 3, "engine")) == 10
    assert used_tokens(ticket, Usage(None, 3, "estimated")) == 10 + 3


async def test_an_unreachable_redis_means_per_replica_limits_at_once() -> None:
    # Port 1 on loopback: connection refused at once.
    service = QuotaService(QuotaConfig(redis_url="redis://127.0.0.1:1/0", replicas=2))
    tenant = Tenant("t", frozenset({"EU"}), tokens_per_minute=1200)
    assert service.backend == "redis"
    started = time.monotonic()
    ticket = await service.admit(tenant, {"max_tokens": 490}, 40, completes=True)
    assert time.monotonic() - started < 1.0
    assert ticket is not None and not ticket.shared
    assert service.backend == "local (redis unreachable)"
    assert service.status(str)["quota_backend"] == "local (redis unreachable)"
    assert ticket.headers["x-ratelimit-limit-tokens"] == "600"  # 1200 / 2 replicas
    with pytest.raises(QuotaExceeded) as refused:
        await service.admit(tenant, {"max_tokens": 490}, 40, completes=True)
    assert "this router's share" in refused.value.message
    await service.close()


async def test_a_tenant_without_quotas_costs_no_redis_call() -> None:
    service = QuotaService(QuotaConfig(redis_url="redis://127.0.0.1:1/0"))
    assert await service.admit(Tenant("t", frozenset({"EU"})), {}, 10, completes=True) is None
    assert service.backend == "redis"  # Redis was never asked, so never found down
    await service.close()


async def test_a_redis_that_hangs_costs_one_timeout_then_no_more() -> None:
    """A Redis that accepts and never answers (a stopped process, a black-holed network):
    the first request waits `redis_timeout` at most and is decided locally; the ones after
    it do not ask Redis at all until a ping gets an answer."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; ends when the client closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = QuotaConfig(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
    service = QuotaService(config)
    tenant = Tenant("t", frozenset({"EU"}), requests_per_minute=100)
    try:
        started = time.monotonic()
        first = await service.admit(tenant, {}, 10, completes=True)
        first_took = time.monotonic() - started
        started = time.monotonic()
        second = await service.admit(tenant, {}, 10, completes=True)
        second_took = time.monotonic() - started
    finally:
        await service.close()
        server.close()
        await server.wait_closed()
    assert first is not None and not first.shared and first_took < 0.2 * 2 + 0.3
    assert second is not None and not second.shared and second_took < 0.05
    assert service.backend == "local (redis unreachable)"
    assert service.last_error and "Timeout" in service.last_error
