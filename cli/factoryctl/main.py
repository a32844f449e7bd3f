"""The `factoryctl` command line (typer): `factoryctl dev tools|vllm|up|down|status|env|load|
kill-sim` and `factoryctl gen`."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from factoryctl import fleet
from factoryctl.errors import FactoryctlError
from factoryctl.gen import run_gen
from factoryctl.home import FleetHome, default_home
from factoryctl.redis_server import ensure_redis
from factoryctl.toolchain import ensure_tools
from factoryctl.topology import DEFAULT_TOPOLOGY, load_topology

app = typer.Typer(
    help="Inference Factory: operate a multi-region LLM inference fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dev = typer.Typer(
    help="The local fleet: a real control plane with simulated accelerators.", no_args_is_help=True
)
app.add_typer(dev, name="dev")

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="FACTORY_HOME",
        help="Fleet home: keeps this fleet's state, names and ports apart.",
    ),
]
TopologyOption = Annotated[
    Path, typer.Option("--topology", help="Topology file (regions, node pools, round trips).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _context(home: Path | None, topology: Path) -> fleet.FleetContext:
    return fleet.FleetContext(FleetHome(home or default_home()), load_topology(topology), _progress)


def _fail(exc: FactoryctlError) -> typer.Exit:
    print(f"error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    return typer.Exit(1)


@dev.command()
def tools(json_output: JsonOption = False) -> None:
    """Find or build the pinned binaries (Kubernetes, etcd, kwok, Helm, Redis) into the cache."""
    try:
        toolchain = ensure_tools(_progress)
        redis = ensure_redis(_progress)  # the routers' shared quotas (Debian's package)
    except FactoryctlError as exc:
        raise _fail(exc) from exc
    found = {**toolchain.as_dict(), "redis-server": str(redis)}
    if json_output:
        print(json.dumps(found, indent=2))
    else:
        for name, path in found.items():
            print(f"{name:<24} {path}")


@dev.command()
def vllm(json_output: JsonOption = False) -> None:
    """Install the pinned real vLLM (CPU build) and make the tiny model, into the cache."""
    from factoryctl.vllm_env import ensure_tiny_model, ensure_vllm  # noqa: PLC0415

    try:
        env = ensure_vllm(_progress)
        values = {**env.as_dict(), "tiny-model": str(ensure_tiny_model(env, _progress))}
    except FactoryctlError as exc:
        raise _fail(exc) from exc
    if json_output:
        print(json.dumps(values, indent=2))
    else:
        for name, value in values.items():
            print(f"{name:<24} {value}")


@dev.command()
def up(
    home: HomeOption = None,
    topology: TopologyOption = DEFAULT_TOPOLOGY,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated components to bring up (default: all).")
    ] = None,
    real_engine: Annotated[
        bool | None,
        typer.Option(
            "--real-engine/--no-real-engine",
            help="Serve the topology's `engine: vllm` pools with real vLLM (default: when the "
            "machine has the memory; FACTORY_REAL_ENGINE=0 turns it off).",
        ),
    ] = None,
) -> None:
    """Bring the local fleet up, component by component (idempotent)."""
    started = time.monotonic()
    try:
        ctx = _context(home, topology)
        ctx.real_engine = real_engine
        fleet.up(ctx, only.split(",") if only else None)
    except FactoryctlError as exc:
        raise _fail(exc) from exc
    _progress(f"fleet up in {time.monotonic() - started:.1f}s (home: {ctx.home.root})")
    values = env_of(ctx)
    _print_env(values, json_output=False)
    _print_examples(values)


@dev.command()
def down(home: HomeOption = None, topology: TopologyOption = DEFAULT_TOPOLOGY) -> None:
    """Stop everything the fleet started; leaves no process behind."""
    try:
        fleet.down(_context(home, topology))
    except FactoryctlError as exc:
        raise _fail(exc) from exc


@dev.command()
def status(
    home: HomeOption = None,
    topology: TopologyOption = DEFAULT_TOPOLOGY,
    json_output: JsonOption = False,
) -> None:
    """Say what runs, component by component."""
    try:
        ctx = _context(home, topology)
        statuses = fleet.status(ctx)
    except FactoryctlError as exc:
        raise _fail(exc) from exc
    if json_output:
        print(json.dumps([s.__dict__ for s in statuses], indent=2, default=str))
        return
    for s in statuses:
        print(f"{s.name:<12} {s.state:<9} {s.detail}")
    running = {s.name for s in statuses if s.state == "running"}
    if {"cluster", "crds"} <= running:
        from factoryctl import report  # noqa: PLC0415

        print()
        print(report.render(report.pool_rows(ctx), report.traffic_last_minute(ctx)))


def env_of(ctx: fleet.FleetContext) -> dict[str, Any]:
    """The fleet's endpoints, in the shape of `factoryctl dev env --json`."""
    recorded: dict[str, Any] = ctx.home.state().get("env", {})
    return {
        "home": str(ctx.home.root),
        "kubeconfig": str(ctx.home.kubeconfig) if ctx.home.kubeconfig.exists() else None,
        "prometheus_url": recorded.get("prometheus_url"),
        "router_url": recorded.get("router_url"),
        "admin_key": recorded.get("admin_key"),
        "tenants": recorded.get("tenants", {}),
        **{k: v for k, v in recorded.items() if k not in {"tenants"}},
        "real_engine": real["why"]
        if (real := ctx.home.state().get("real_engine", {})).get("on")
        else None,
    }


DEMO_TENANT = "eu-only"
DEMO_MODEL = "llama-3.1-8b-instruct"
REAL_ENGINE_MODEL = "tiny-llama"  # deploy/local/tiny-llama.yaml


def _shell_exports(values: dict[str, Any]) -> list[str]:
    """`export` lines for KUBECONFIG and, once the router runs, the openai client's variables."""
    lines = []
    if values["kubeconfig"]:
        lines.append(f"export KUBECONFIG={values['kubeconfig']}")
    demo = (values.get("tenants") or {}).get(DEMO_TENANT)
    if values.get("router_url") and demo:
        # The openai clients read these two variables themselves.
        lines.append(f"export OPENAI_BASE_URL={values['router_url']}/v1")
        lines.append(f"export OPENAI_API_KEY={demo['api_key']}  # tenant {DEMO_TENANT}")
    return lines


def _print_env(values: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print(json.dumps(values, indent=2))
        return
    for line in _shell_exports(values):
        print(line)
    for key, value in values.items():
        if key not in {"kubeconfig", "tenants", "home", "admin_key"} and value:
            print(f"# {key}: {value}")


def _print_examples(values: dict[str, Any]) -> None:
    if not values.get("router_url"):
        return
    body = json.dumps({"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hello!"}]})
    print(f"""
# The router: {values["router_url"]} (demo tenant {DEMO_TENANT}, EU only; others: `dev env --json`)
# Try it with curl:
eval "$(.venv/bin/factoryctl dev env)"
curl --fail -s "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" \\
  -H 'Content-Type: application/json' -d '{body}'
# or with the openai client (it reads OPENAI_BASE_URL and OPENAI_API_KEY):
.venv/bin/python -c 'from openai import OpenAI; print(OpenAI().chat.completions.create(
  model="{DEMO_MODEL}", messages=[{{"role": "user", "content": "Hello!"}}],
  ).choices[0].message.content)'
""")
    if values.get("real_engine"):
        print(f"# Real vLLM serves model {REAL_ENGINE_MODEL!r} ({values['real_engine']}): use "
              f"that model name in the examples above.")  # fmt: skip


@dev.command()
def env(
    home: HomeOption = None,
    topology: TopologyOption = DEFAULT_TOPOLOGY,
    json_output: JsonOption = False,
) -> None:
    """Print KUBECONFIG and the fleet's other endpoints (shell or --json)."""
    try:
        _print_env(env_of(_context(home, topology)), json_output)
    except FactoryctlError as exc:
        raise _fail(exc) from exc


@dev.command()
def load(
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (Poisson).")] = 5.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds to send for.")] = 30.0,
    tenants: Annotated[str, typer.Option(help="Comma-separated demo tenants.")] = "global",
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models (default: all the tenant may use).")
    ] = None,
    shared_prefix: Annotated[
        float, typer.Option(min=0, max=1, help="Share of prompts with a common prefix.")
    ] = 0.5,
    stream: Annotated[bool, typer.Option(help="Stream the answers (SSE).")] = True,
    seed: int = 0,
    home: HomeOption = None,
    topology: TopologyOption = DEFAULT_TOPOLOGY,
) -> None:
    """Send a workload through the router so you can watch the fleet under load."""
    import asyncio  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    from factoryctl.load import Workload, run  # noqa: PLC0415

    values = env_of(_context(home, topology))
    if not values.get("router_url"):
        raise _fail(FactoryctlError("the router is not running", hint="factoryctl dev up"))
    keys = {}
    for name in tenants.split(","):
        if name not in values["tenants"]:
            raise _fail(
                FactoryctlError(
                    f"unknown tenant {name!r}", hint=f"known: {', '.join(values['tenants'])}"
                )
            )
        keys[name] = values["tenants"][name]["api_key"]
    allowed: dict[str, list[str]] = {}
    for name, key in keys.items():
        listed = httpx.get(
            f"{values['router_url']}/v1/models",
            timeout=10,
            headers={"Authorization": f"Bearer {key}"},
        ).json()["data"]
        served = [m["id"] for m in listed]
        allowed[name] = [m for m in (models.split(",") if models else served) if m in served]
        if not allowed[name]:
            raise _fail(FactoryctlError(f"tenant {name} may use none of those models"))
    work = Workload(
        values["router_url"], keys, allowed, rate, duration, shared_prefix, stream=stream, seed=seed
    )
    _progress(f"sending {rate}/s for {duration:.0f}s as {', '.join(keys)}")
    print(asyncio.run(run(work)).summary())


@dev.command("kill-sim")
def kill_sim(
    region: Annotated[str, typer.Argument(help="Region whose simulated engines to kill.")],
    home: HomeOption = None,
    topology: TopologyOption = DEFAULT_TOPOLOGY,
) -> None:
    """Kill a region's simulator process (SIGKILL), as a regional outage would.

    The engines agent leaves it down; `factoryctl dev up` starts it again.
    """
    from factoryctl import procs  # noqa: PLC0415
    from factoryctl.components.engines import sim_process  # noqa: PLC0415

    ctx = _context(home, topology)
    if region not in {r.name for r in ctx.topology.regions}:
        raise _fail(FactoryctlError(f"unknown region {region!r}"))
    if not procs.stop(ctx.home, sim_process(region), grace=5, sig=signal.SIGKILL):
        raise _fail(FactoryctlError(f"the simulator of {region} is not running"))


@dev.command("engines-agent", hidden=True)
def engines_agent(home: HomeOption = None, topology: TopologyOption = DEFAULT_TOPOLOGY) -> None:
    """Run the engines agent in the foreground (the `engines` component starts it)."""
    import logging  # noqa: PLC0415

    from factoryctl.agents.engines import EnginesAgent  # noqa: PLC0415
    from factoryctl.agents.real_engine import RealEngines  # noqa: PLC0415
    from factoryctl.components.engines import control_url  # noqa: PLC0415
    from factoryctl.components.prometheus import targets_file  # noqa: PLC0415
    from factoryctl.components.real_engine import setup_of  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe is noise
    ctx = _context(home, topology)
    urls = {r.name: control_url(ctx, r.name) for r in ctx.topology.regions}
    setup = setup_of(ctx.home)
    if setup is None and (ctx.home.state().get("real_engine") or {}).get("on"):
        logging.error("real engine on, but the vLLM environment or the tiny model is missing "
                      "(`factoryctl dev vllm`): the simulator serves every pod")  # fmt: skip
    real = RealEngines(ctx.home, setup) if setup is not None else None
    logging.info("real engine: %s", "on" if real else "off (the simulator serves every pod)")
    EnginesAgent(str(ctx.home.kubeconfig), ctx.topology, urls, targets_file(ctx), real=real).run()


@app.command("gen")
def gen(
    steps: Annotated[
        list[str] | None, typer.Argument(help="crds, chart, gitops (default: all, in order).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 listing the stale files.")
    ] = False,
    helm: Annotated[
        Path | None, typer.Option("--helm", help="helm binary (default: the pinned one).")
    ] = None,
) -> None:
    """Regenerate every generated file (CRDs, chart copies, dashboards, runbooks, GitOps render)."""
    try:
        code = run_gen(steps or [], check=check, helm=helm)
    except FactoryctlError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
