#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, the pinned toolchain and vLLM, then pytest.
# Prints how long each phase took. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FACTORY_VENV:-$ROOT/.venv}
phase() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "phase ${name}: $((SECONDS - t0))s" >&2; }
phase bootstrap "$ROOT/scripts/bootstrap.sh"
# The pinned control plane, Helm, and the validators tests/static/test_validators.py runs
# (kubeconform, kube-score, the Kubernetes JSON schemas); promtool comes with bootstrap's
# prometheus. Built once into the cache; warm about 2 seconds.
phase toolchain "$VENV/bin/factoryctl" dev tools
# The pinned real vLLM (CPU build, its own venv in the cache, ~6 GB) and the tiny model it
# serves: tests/integration/vllm fails without them. Cold about 5 minutes, warm about 1 second.
phase vllm "$VENV/bin/factoryctl" dev vllm
cd "$ROOT"
phase tests "$VENV/bin/python" -m pytest "$@"
