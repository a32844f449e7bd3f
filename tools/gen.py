"""Every generated file of the repository, behind one command: `factoryctl gen` (or `make gen`).

Steps, in order; each reads what the steps before it wrote:

- `crds`: the operator's pydantic models (operator/factory_operator/api) -> crds/*.yaml
  (`factory_operator.api.crdgen`);
- `chart`: what tools/sync_chart.py derives without Helm: the CRDs' copies in the chart, the
  dashboards (tools/dashboards.py) in deploy/monitoring/dashboards/ and the chart, the alerts'
  copy in the chart, docs/runbooks.md, the values table of the chart's README;
- `gitops`: the chart rendered with deploy/gitops/base/values.yaml by the pinned helm ->
  deploy/gitops/base/inference-factory.yaml (skipped with a notice while helm is not built:
  `factoryctl dev tools`).

Usage: python tools/gen.py [STEP ...] [--check] [--helm PATH]   (no STEP: all of them)
--check writes nothing and exits 1 listing the stale files (tests/static/test_gen.py runs it).
Files are written only when their content changes.

This is the one implementation: `factoryctl gen` runs this script (factoryctl may not import the
operator, `.importlinter`), `make gen` and `make crds` run `factoryctl gen`, and
`python tools/sync_chart.py` runs the `chart` and `gitops` steps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory_operator.api import crdgen  # noqa: E402
from tools import sync_chart  # noqa: E402

Files = dict[Path, str]


@dataclass(frozen=True)
class Step:
    """One generator: `produce(helm)` returns path -> the text it should hold."""

    name: str
    summary: str
    produce: Callable[[Path | None], Files]
    needs_helm: bool = False


def _crds(_: Path | None) -> Files:
    return {crdgen.DEFAULT_DIR / name: text for name, text in crdgen.render_crds().items()}


def _chart(_: Path | None) -> Files:
    return sync_chart.chart_copies()


def _gitops(helm: Path | None) -> Files:
    return sync_chart.gitops_render(helm) if helm else {}


STEPS = (
    Step("crds", "crds/*.yaml from the operator's pydantic models", _crds),
    Step("chart", "chart copies, dashboards, runbooks, the chart README's values", _chart),
    Step("gitops", "deploy/gitops/base/inference-factory.yaml (helm template)", _gitops, True),
)


def stale(files: Files) -> list[Path]:
    """The files whose content on disk differs from `files` (or that are missing)."""
    return [p for p, text in files.items() if not p.exists() or p.read_text() != text]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(steps: Sequence[Step], *, check: bool, helm: Path | None) -> int:
    """Run `steps` in order: write what is stale, or (check) list it; 1 if check found any."""
    outdated: list[Path] = []
    for step in steps:
        if step.needs_helm and helm is None:
            print(
                f"notice: step {step.name} skipped: the pinned helm is not built yet "
                "(factoryctl dev tools)",
                file=sys.stderr,
            )
            continue
        files = step.produce(helm)
        for path in stale(files):
            if check:
                outdated.append(path)
                print(f"stale: {_shown(path)} (step {step.name})")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(files[path])
                print(f"wrote {_shown(path)}")
    if outdated:
        print("run: factoryctl gen (or make gen)", file=sys.stderr)
        return 1
    return 0


def select(names: Sequence[str]) -> list[Step]:
    """The steps named, in the order of STEPS (all of them when none is named)."""
    known = {step.name for step in STEPS}
    unknown = sorted(set(names) - known)
    if unknown:
        raise SystemExit(f"unknown step(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [step for step in STEPS if not names or step.name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate every generated file, or check that none is stale.",
        epilog="steps: " + "; ".join(f"{s.name}: {s.summary}" for s in STEPS),
    )
    parser.add_argument("steps", nargs="*", metavar="STEP", help="steps to run (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--helm", help="helm binary (default: the pinned toolchain's)")
    args = parser.parse_args(argv)
    steps = select(args.steps)
    helm = sync_chart.find_helm(args.helm) if any(s.needs_helm for s in steps) else None
    return run(steps, check=args.check, helm=helm)


if __name__ == "__main__":
    raise SystemExit(main())
