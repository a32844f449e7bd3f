"""The autoscaler's load reader: its PromQL evaluated by promtool on synthetic series, the
pure conversion of query results, and the reader's failure mode (None: counts are held)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_operator.k8s.load import LoadReader, Vector, loads_from_results, queries
from factory_operator.plan.autoscale import PoolLoad

LLAMA = 'namespace="ml",factory="llama"'


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def test_the_queries_mean_what_the_autoscaler_reads(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian package prometheus)"
    west_a, west_b = f'{LLAMA},pool="west",pod="a"', f'{LLAMA},pool="west",pod="b"'
    east = f'{LLAMA},pool="east",pod="d"'
    bucket = "vllm:time_to_first_token_seconds_bucket"
    series = [
        _series("vllm:num_requests_running", west_a, "10x20"),
        _series("vllm:num_requests_running", west_b, "20x20"),
        _series(
            "vllm:num_requests_running", 'namespace="ml",factory="other",pool="west"', "999x20"
        ),
        _series("vllm:num_requests_running", east, "0+15x20"),  # +1 request per second
        _series("vllm:num_requests_waiting", west_a, "5x20"),
        _series("vllm:num_requests_waiting", east, "0x20"),
        _series("vllm:kv_cache_usage_perc", west_a, "0.25x20"),
        _series("vllm:kv_cache_usage_perc", west_b, "0.75x20"),
        _series(bucket, f'{east},le="0.1"', "0x20"),
        _series(bucket, f'{east},le="0.5"', "0+90x20"),
        _series(bucket, f'{east},le="1"', "0+100x20"),
        _series(bucket, f'{east},le="+Inf"', "0+100x20"),
        _series("factory_router_pending_requests", f'{LLAMA},pool="west"', "3x20"),
        _series("vllm:generation_tokens_total", west_a, "0+1500x20"),  # 100 tokens/s
        _series("vllm:generation_tokens_total", west_b, "0+3000x20"),
    ]
    q = queries("ml", "llama")
    expected: dict[str, list[tuple[str, float]]] = {
        "running": [("east", 240), ("west", 30)],
        "waiting": [("east", 0), ("west", 5)],
        "kv": [("west", 0.5)],
        "ttft_p95": [("east", 0.75)],  # 95th of 100 falls halfway into (0.5, 1]
        "growth": [("east", 1), ("west", 0)],
        "pending": [("west", 3)],
        "tokens": [("west", 300)],
    }
    tests = [
        {
            "expr": f"round({q[name]}, 0.001)",
            "eval_time": "4m",
            "exp_samples": [{"labels": f'{{pool="{p}"}}', "value": v} for p, v in samples],
        }
        for name, samples in expected.items()
    ]
    (tmp_path / "empty.yaml").write_text("groups: []\n")
    spec = {
        "rule_files": ["empty.yaml"],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": tests}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yaml"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _vector(*rows: tuple[str | None, Any]) -> Vector:
    return [
        {"metric": {"pool": pool} if pool else {}, "value": [1767225600.0, value]}
        for pool, value in rows
    ]


def test_results_become_pool_loads() -> None:
    loads = loads_from_results(
        {
            "running": _vector(("west", "30"), ("east", "4")),
            "waiting": _vector(("west", "5")),
            "kv": _vector(("west", "0.5"), ("east", "NaN")),
            "ttft_p95": _vector(("west", "0.75"), ("east", "+Inf")),
            "growth": _vector(("west", "-2")),
            "pending": _vector((None, "9"), ("cold", "3")),
            "tokens": _vector(("west", "420.5")),
        }
    )
    assert loads["west"] == PoolLoad(
        running=30,
        waiting=5,
        kv_cache_usage=0.5,
        ttft_p95_seconds=0.75,
        growth_per_second=-2,
        tokens_per_second=420.5,
    )
    assert loads["east"] == PoolLoad(running=4)  # NaN and +Inf are no sample
    assert loads["cold"] == PoolLoad(pending=3)  # a pool at zero: only the router's demand


def test_unparseable_samples_are_skipped() -> None:
    loads = loads_from_results({"running": [{"metric": {"pool": "a"}, "value": [0, "x"]}, {}]})
    assert loads == {}


def test_the_reader_runs_every_query_for_the_factory() -> None:
    seen: list[str] = []

    def fake(promql: str) -> Vector:
        seen.append(promql)
        return _vector(("west", "7")) if "num_requests_running" in promql else []

    loads = asyncio.run(LoadReader("http://prometheus:9090", query=fake).read("ml", "llama"))
    assert loads is not None and loads["west"].running == 7
    assert len(seen) == 7 and all('factory="llama"' in q for q in seen)


def test_a_failed_read_is_no_metrics(caplog: pytest.LogCaptureFixture) -> None:
    def down(promql: str) -> Vector:
        raise ConnectionError("connection refused")

    reader = LoadReader("http://prometheus:9090", query=down)
    assert asyncio.run(reader.read("ml", "llama")) is None
    assert "connection refused" in caplog.text


def test_label_values_are_escaped() -> None:
    assert 'factory="a\\"b"' in queries("ml", 'a"b')["running"]
