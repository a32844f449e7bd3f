#!/usr/bin/env bash
# Bench-only virtualenv with the peers of bench/router_overhead/peers.py (never used by CI):
#   vllm-router   vLLM's Rust router (a Python launcher around a compiled extension)
#   litellm       the LiteLLM proxy (litellm[proxy])
# Pinned to versions that install from PyPI and ran in the bench. litellm 1.108.5 is the
# newest 1.108.x whose [proxy] extra resolves on PyPI (1.108.10+ and 1.110.x pin
# litellm-enterprise / litellm-proxy(-extras) releases that are not published there).
# The `bench` extra in pyproject.toml also lists vllm itself; it is not needed here (the
# upstream is bench/router_overhead/upstream.py) and is not installed.
#
#   bash bench/router_overhead/setup_peers.sh            # -> .venv-bench/ at the repo root
#   BENCH_VENV=/elsewhere bash bench/router_overhead/setup_peers.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3.11}"

VLLM_ROUTER_VERSION=0.1.17
LITELLM_VERSION=1.108.5

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
    "vllm-router==$VLLM_ROUTER_VERSION" \
    "litellm[proxy]==$LITELLM_VERSION"
"$VENV/bin/vllm-router" --help >/dev/null
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" -c "import litellm.proxy.proxy_server"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
for d in ("vllm-router", "litellm", "fastapi", "uvicorn", "httpx", "aiohttp"):
    try:
        print(f"{d}=={m.version(d)}")
    except m.PackageNotFoundError:
        pass
PY
