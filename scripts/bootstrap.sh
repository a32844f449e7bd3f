#!/usr/bin/env bash
# Installs what the local fleet and the test suite need, and nothing twice:
#   - Debian packages: Prometheus (the real one the fleet scrapes with);
#   - a virtualenv (.venv, or $FACTORY_VENV) with the pinned Python dependencies
#     (requirements/lock.txt) and this project, editable;
#   - checks that Go is there (it builds the control-plane binaries; see `factoryctl dev tools`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FACTORY_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  echo "bootstrap: Go >= 1.26 is needed to build the control-plane binaries (https://go.dev/dl)" >&2
  exit 1
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "bootstrap: Python >= 3.11 is needed" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.inference-factory-stamp"
want=$(cat "$ROOT/requirements/lock.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/lock.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi
