#!/usr/bin/env bash
# Starts the local fleet (installing what it needs first). Arguments go to `factoryctl dev up`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FACTORY_VENV:-$ROOT/.venv}
"$ROOT/scripts/bootstrap.sh"
exec "$VENV/bin/factoryctl" dev up "$@"
