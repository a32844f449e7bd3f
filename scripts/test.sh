#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, the pinned toolchain, then pytest.
# Prints how long each phase took. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FACTORY_VENV:-$ROOT/.venv}
phase() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "phase ${name}: $((SECONDS - t0))s" >&2; }
phase bootstrap "$ROOT/scripts/bootstrap.sh"
phase toolchain "$VENV/bin/factoryctl" dev tools
cd "$ROOT"
phase tests "$VENV/bin/python" -m pytest "$@"
