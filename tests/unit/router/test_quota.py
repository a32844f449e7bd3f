"""Quotas, the pure parts (`factory_router.quota.buckets`) and the service's fallback: token
buckets admit at most capacity + rate x T, a refused request takes nothing and is told when
it fits, settling gives back the unused reservation, the estimate is the worst case, the
429 has OpenAI's shape and headers; a Redis that refuses connections means per-replica
limits at once (no error to the client), and a tenant without quotas costs no Redis call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

import pytest

from factory_router.metering.usage import Usage
from factory_router.policy.errors import BadRequest, PolicyError
from factory_router.policy.tenants import Tenant, parse_tenants
from factory_router.quota.buckets import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    MAX_N,
    MAX_TOKENS,
    PROMPT_BYTES_PER_TOKEN,
    Bucket,
    LocalBuckets,
    QuotaExceeded,
    bound_body,
    buckets_of,
    duration,
    estimate,
    exceeded,
    rate_limit_headers,
)
from factory_router.quota.redis_store import bucket_key, lease_key
from factory_router.quota.service import QuotaConfig, QuotaService, used_tokens
from tests.support.waiting import async_wait_until

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
    chat = {"path": CHAT_PATH, "default": 1024}
    assert estimate({"max_tokens": 50}, body, **chat).total == prompt + 50  # type: ignore[arg-type]
    both = {"max_tokens": 50, "max_completion_tokens": 70, "n": 2}
    assert estimate(both, body, **chat).completion == 140  # type: ignore[arg-type]
    assert estimate({"max_tokens": 50}, body, path="/v1/embeddings", default=9).completion == 0


@pytest.mark.parametrize(
    ("doc", "path", "completion", "bound"),
    [
        # read as the engine's pydantic lax int reads them (the review: these reserved 1024)
        ({"max_tokens": "5000"}, CHAT_PATH, 5000, None),
        ({"max_tokens": 5000.0}, CHAT_PATH, 5000, None),
        ({"max_tokens": " 5_000 "}, CHAT_PATH, 5000, None),
        ({"max_completion_tokens": None, "max_tokens": 2000}, CHAT_PATH, 2000, None),
        # /v1/completions has no max_completion_tokens: max_tokens is what the engine reads
        ({"max_completion_tokens": 1, "max_tokens": 5000}, COMPLETIONS_PATH, 5000, None),
        # absent: a bound the router writes into the forwarded body
        ({}, CHAT_PATH, 1024, ("max_tokens", 1024)),
        ({"max_completion_tokens": None}, CHAT_PATH, 1024, ("max_tokens", 1024)),
        ({"max_completion_tokens": 9}, COMPLETIONS_PATH, 16, ("max_tokens", 16)),
        # every candidate is generated: n, or best_of when larger
        ({"max_tokens": 100, "n": "3"}, CHAT_PATH, 300, None),
        ({"max_tokens": 100, "n": 2, "best_of": 5}, COMPLETIONS_PATH, 500, None),
        ({"n": 4}, CHAT_PATH, 4096, ("max_tokens", 1024)),
        # a completions batch: every prompt is generated for (the review: reserved once)
        ({"max_tokens": 100, "prompt": ["a", "b", "c"]}, COMPLETIONS_PATH, 300, None),
        ({"max_tokens": 100, "prompt": [[1, 2], [3]]}, COMPLETIONS_PATH, 200, None),
        ({"max_tokens": 100, "prompt": [1, 2, 3]}, COMPLETIONS_PATH, 100, None),  # one, tokens
        ({"max_tokens": 100, "prompt": "abc"}, COMPLETIONS_PATH, 100, None),
        ({"max_tokens": 100, "prompt": ["a", "b"], "n": 2}, COMPLETIONS_PATH, 400, None),
    ],
)
def test_the_estimate_reads_counts_as_the_engine_does(
    doc: dict[str, object], path: str, completion: int, bound: tuple[str, int] | None
) -> None:
    est = estimate(doc, 40, path=path, default=1024)
    assert (est.completion, est.bound) == (completion, bound)


@pytest.mark.parametrize(
    "doc",
    [
        {"max_tokens": 5000.5},
        {"max_tokens": "5e3"},
        {"max_tokens": [1]},
        {"max_tokens": 0},
        {"max_tokens": -1},
        {"max_tokens": MAX_TOKENS + 1},
        {"max_tokens": 10**320},  # was a 500 (OverflowError)
        {"max_tokens": 10**40},  # was a 429 with an absurd Retry-After
        {"max_tokens": "9" * 400},
        {"max_completion_tokens": "x", "max_tokens": 10},
        {"max_tokens": 10, "n": 0},
        {"max_tokens": 10, "n": MAX_N + 1},
        {"max_tokens": 10, "best_of": 1.5},
    ],
)
def test_a_count_the_engine_would_refuse_or_beyond_any_context_is_a_400(
    doc: dict[str, object],
) -> None:
    with pytest.raises(BadRequest) as refused:
        estimate(doc, 40, path=CHAT_PATH, default=1024)
    assert refused.value.status == 400 and refused.value.type == "invalid_request_error"


def test_the_bound_is_written_into_the_forwarded_body() -> None:
    doc = {"model": "m", "messages": [{"role": "user", "content": "h\u00e9"}], "stream": True}
    sent = bound_body(doc, ("max_tokens", 1024))
    assert json.loads(sent) == {**doc, "max_tokens": 1024}
    assert "hé".encode() in sent  # UTF-8 as sent


def test_retry_after_is_at_most_the_buckets_period() -> None:
    tpd = Bucket("tokens_per_day", 1000.0, 1000 / 86400)
    for bucket, most in ((TPM, 60), (tpd, 86400)):
        verdict = LocalBuckets().take(["t"], [bucket], [MAX_TOKENS * MAX_N], 0.0)
        err = exceeded("acme", [bucket], verdict, [MAX_TOKENS * MAX_N], scope="")
        assert err.retry_after is not None and 1 <= err.retry_after <= most
        assert "Request too large" in err.message


def test_keys_keep_every_tenant_apart_in_one_hash_tag() -> None:
    """`team{x}` and `team(x)` shared their keys (braces were replaced by parentheses)."""
    a, b = bucket_key("q:", "team{x}", TPM), bucket_key("q:", "team(x)", TPM)
    assert a != b
    for key in (a, b, lease_key("q:", "team{x}")):
        assert key.count("{") == 1 and key.count("}") == 1  # one Cluster hash tag
    assert bytes.fromhex(a[a.index("{") + 1 : a.index("}")]).decode() == "team{x}"


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
    ticket = await service.admit(tenant, {"max_tokens": 10}, 40, path=CHAT_PATH)
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
    ticket = await service.admit(tenant, {"max_tokens": 490}, 40, path=CHAT_PATH)
    assert time.monotonic() - started < 1.0
    assert ticket is not None and not ticket.shared
    assert service.backend == "local (redis unreachable)"
    assert service.status(str)["quota_backend"] == "local (redis unreachable)"
    assert ticket.headers["x-ratelimit-limit-tokens"] == "600"  # 1200 / 2 replicas
    with pytest.raises(QuotaExceeded) as refused:
        await service.admit(tenant, {"max_tokens": 490}, 40, path=CHAT_PATH)
    assert "this router's share" in refused.value.message
    await service.close()


async def test_a_tenant_without_quotas_costs_no_redis_call() -> None:
    service = QuotaService(QuotaConfig(redis_url="redis://127.0.0.1:1/0"))
    assert await service.admit(Tenant("t", frozenset({"EU"})), {}, 10, path=CHAT_PATH) is None
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
        first = await service.admit(tenant, {}, 10, path=CHAT_PATH)
        first_took = time.monotonic() - started
        started = time.monotonic()
        second = await service.admit(tenant, {}, 10, path=CHAT_PATH)
        second_took = time.monotonic() - started
    finally:
        await service.close()
        server.close()
        await server.wait_closed()
    assert first is not None and not first.shared and first_took < 0.2 * 2 + 0.3
    assert second is not None and not second.shared and second_took < 0.05
    assert service.backend == "local (redis unreachable)"
    assert service.last_error and "Timeout" in service.last_error


class FakeRedis:
    """A RESP server on loopback whose script replies the test chooses (`reply`: raw RESP
    bytes for EVALSHA/EVAL); PING and connection set-up always answer."""

    def __init__(self) -> None:
        self.reply = b"+OK\r\n"
        self.scripts = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                args = []
                for _ in range(int(line[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                name = args[0].upper()
                if name in (b"EVALSHA", b"EVAL"):
                    self.scripts += 1
                    writer.write(self.reply)
                elif name == b"PING":
                    writer.write(b"+PONG\r\n")
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# The take script's reply for one bucket: admitted, no wait, 1 holder, the level.
ADMITTED = b"*4\r\n:1\r\n$1\r\n0\r\n:1\r\n$3\r\n100\r\n"
MALFORMED = [
    b"+OK\r\n",
    b"*3\r\n:1\r\n$1\r\n0\r\n:1\r\n",  # no levels (an IndexError once)
    b"*4\r\n:1\r\n$1\r\n0\r\n:1\r\n$3\r\nabc\r\n",  # a level that is no number
    b"*4\r\n:7\r\n$1\r\n0\r\n:1\r\n$3\r\n100\r\n",
    b"*4\r\n:1\r\n$3\r\nnan\r\n:1\r\n$3\r\n100\r\n",
    b":1\r\n",
]


@pytest.mark.parametrize("reply", MALFORMED)
async def test_a_malformed_script_reply_is_a_failure_never_a_5xx(reply: bytes) -> None:
    """A reply of the wrong shape (a proxy, a foreign server) was an IndexError/ValueError
    out of `admit` (a 500) while /readyz said ok: now it trips the circuit like an error."""
    async with FakeRedis() as fake:
        fake.reply = reply
        service = QuotaService(QuotaConfig(redis_url=fake.url, redis_timeout=0.5))
        tenant = Tenant("t", frozenset({"EU"}), tokens_per_minute=6000)
        try:
            ticket = await service.admit(tenant, {"max_tokens": 10}, 40, path=CHAT_PATH)
            assert ticket is not None and not ticket.shared
            assert service.backend == "local (redis unreachable)"
            assert service.last_error and "ReplyError" in service.last_error
        finally:
            await service.close()


async def test_a_redis_that_pings_but_fails_scripts_never_governs_and_flaps_keep_local() -> None:
    """PING answers, the script does not (OOM, an ACL, a read-only replica): the probe runs
    the script, so the replica stays on its own buckets, and those are never refilled by a
    switch: a Redis that comes and goes cannot hand out a fresh share each time."""
    async with FakeRedis() as fake:
        fake.reply = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
        config = QuotaConfig(
            redis_url=fake.url, redis_timeout=0.5, retry_interval=0.05, recover_probes=3
        )
        service = QuotaService(config)
        tenant = Tenant("t", frozenset({"EU"}), tokens_per_minute=600)  # 10 a second
        body = {"max_tokens": 90}  # + 10 of prompt: 100 a request

        async def admitted() -> bool:
            try:
                await service.admit(tenant, body, 40, path=CHAT_PATH)
            except QuotaExceeded:
                return False
            return True

        runner = asyncio.create_task(service.run())
        try:
            results = [await admitted() for _ in range(7)]
            assert results == [True] * 6 + [False]  # the local share, then refused
            probes = fake.scripts
            await async_wait_until(lambda: fake.scripts >= probes + 5, timeout=5, what="probes")
            assert service.backend == "local (redis unreachable)"  # PONG is not enough
            # Redis runs scripts again: it governs after 3 good probes in a row.
            fake.reply = ADMITTED
            await async_wait_until(lambda: service.backend == "redis", timeout=5, what="back")
            assert await admitted()  # Redis (the fake) admits
            # It fails again: this replica's buckets continue where they were (refused).
            fake.reply = b"-READONLY You can't write against a read only replica.\r\n"
            assert not await admitted()
            assert service.backend == "local (redis unreachable)"
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await service.close()


async def test_hysteresis_one_good_probe_between_failures_does_not_switch_back() -> None:
    async with FakeRedis() as fake:
        fake.reply = b"-ERR flaky\r\n"
        config = QuotaConfig(
            redis_url=fake.url, redis_timeout=0.5, retry_interval=0.05, recover_probes=3
        )
        service = QuotaService(config)
        tenant = Tenant("t", frozenset({"EU"}), requests_per_minute=600)
        await service.admit(tenant, {}, 10, path=CHAT_PATH)  # trips
        runner = asyncio.create_task(service.run())
        try:
            for _ in range(10):  # good, bad, good, bad...: never 3 in a row
                fake.reply = ADMITTED if fake.reply != ADMITTED else b"-ERR flaky\r\n"
                seen = fake.scripts

                def probed(seen: int = seen) -> bool:
                    return fake.scripts > seen

                await async_wait_until(probed, timeout=5, what="a probe")
                assert service.status(str)["quota_backend"] == "local (redis unreachable)"
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await service.close()
