"""`factoryctl gen`: regenerate every generated file of the repository, or check that none is
stale (`--check`).

The generators themselves are in tools/gen.py (the steps `crds`, `chart`, `gitops`, and what
each writes); this command runs that script with this Python from the repository root, so
there is one implementation, and factoryctl does not import the operator's CRD generator
(the components never import each other: `.importlinter`). `make gen` and `make crds` call
this command. It works in a checkout of the repository, as `factoryctl dev` does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from factoryctl.errors import FactoryctlError
from factoryctl.topology import REPO_ROOT

GEN_SCRIPT = REPO_ROOT / "tools" / "gen.py"
# Three steps: the CRDs and the chart's copies take about a second, `helm template` about
# another; a minute is plenty even on two busy cores.
GEN_TIMEOUT_S = 120.0


def gen_command(steps: list[str], *, check: bool, helm: Path | None) -> list[str]:
    """The command line that runs the generators."""
    return [
        sys.executable,
        str(GEN_SCRIPT),
        *steps,
        *(["--check"] if check else []),
        *(["--helm", str(helm)] if helm else []),
    ]


def run_gen(steps: list[str], *, check: bool, helm: Path | None) -> int:
    """Run tools/gen.py; its output goes to ours; its exit status is returned."""
    if not GEN_SCRIPT.exists():
        raise FactoryctlError(
            f"{GEN_SCRIPT} not found", hint="factoryctl gen runs in a checkout of the repository"
        )
    try:
        done = subprocess.run(
            gen_command(steps, check=check, helm=helm),
            cwd=REPO_ROOT,
            timeout=GEN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FactoryctlError(f"tools/gen.py timed out after {GEN_TIMEOUT_S:.0f}s") from exc
    return done.returncode
