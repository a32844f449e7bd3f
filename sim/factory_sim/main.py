"""The ``factory-sim`` command line.

    factory-sim serve --control-port 8089 [--config engines.yaml]

Starts a SimHost with the engines listed in the config file (a YAML list of EngineConfig
objects, or a mapping with an ``engines`` list), serves the control API on 127.0.0.1, prints
one JSON line ``{"control_url": ..., "engines": [...]}`` once everything listens, and runs
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from factory_sim.server import ControlServer, EngineConfig, SimHost


def load_configs(path: Path) -> list[EngineConfig]:
    data: Any = yaml.safe_load(path.read_text()) or []
    if isinstance(data, dict):
        data = data.get("engines", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of engines or a mapping with 'engines'")
    return [EngineConfig.model_validate(item) for item in data]


async def serve(control_host: str, control_port: int, configs: list[EngineConfig]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimHost() as host:
        for config in configs:
            await host.add(config)
        control = ControlServer(host, control_host, control_port)
        await control.start()
        try:
            ready = {
                "control_url": f"http://{control_host}:{control.port}",
                "engines": [h.describe() for h in host.engines.values()],
            }
            print(json.dumps(ready), flush=True)
            await stop.wait()
        finally:
            await control.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="host simulated engines and the control API")
    serve_p.add_argument("--control-port", type=int, default=0, help="0 picks a free port")
    serve_p.add_argument(
        "--control-host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"]
    )
    serve_p.add_argument("--config", type=Path, help="YAML file of engines to start")
    args = parser.parse_args(argv)
    try:
        configs = load_configs(args.config) if args.config else []
    except (OSError, ValueError) as exc:
        print(f"factory-sim: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(args.control_host, args.control_port, configs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
