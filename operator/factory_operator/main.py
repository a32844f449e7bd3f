"""``factory-operator``: run the operator with settings from flags and FACTORY_OPERATOR_* env.

Flags override the environment. Logs are JSON lines by default; /metrics is served by
prometheus_client from the operator's own registry; kopf's liveness endpoint is optional.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import kopf
from prometheus_client import start_http_server

from factory_operator.api.accelerators import NODE_LABEL_SCHEMES
from factory_operator.handlers import WATCHABLE, build_registry
from factory_operator.k8s import Kube, OperatorMetrics, load_api_client, may_watch
from factory_operator.plan import OperatorSettings

log = logging.getLogger("factory_operator")
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Only plain values from `extra=`: kopf passes whole objects (its settings) there.
        entry.update(
            {
                k: v
                for k, v in record.__dict__.items()
                if k not in _STD and isinstance(v, str | int | float | bool)
            }
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def parse_args(argv: list[str] | None = None) -> OperatorSettings:
    """Flags -> settings (unset flags fall back to the environment, then the defaults)."""
    parser = argparse.ArgumentParser(prog="factory-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable); default: all",
    )
    parser.add_argument("--region", help="reconcile only this FleetRegion's pools")
    parser.add_argument("--annotation-prefix", help="prefix of annotations and labels")
    parser.add_argument("--finalizer", help="finalizer name")
    parser.add_argument("--api-timeout", type=float, dest="api_timeout_seconds")
    parser.add_argument("--api-connect-timeout", type=float, dest="api_connect_timeout_seconds")
    parser.add_argument(
        "--resync",
        type=float,
        dest="resync_seconds",
        help="re-evaluate every factory at least this often (seconds)",
    )
    parser.add_argument(
        "--liveness",
        dest="liveness_endpoint",
        help="kopf liveness URL, e.g. http://0.0.0.0:8080/healthz; '' disables",
    )
    parser.add_argument("--metrics-port", type=int, help="/metrics port; 0 disables")
    parser.add_argument("--metrics-address", help="/metrics listen address (default 0.0.0.0)")
    parser.add_argument("--log-format", choices=["json", "plain"])
    parser.add_argument(
        "--node-label-scheme",
        choices=NODE_LABEL_SCHEMES,
        help="node labels that tell accelerator types apart, for FleetRegions that do not "
        "set spec.nodeLabelScheme (default gfd)",
    )
    parser.add_argument(
        "--neuron-scheduler-name",
        help="schedulerName of pods with more than one Neuron device (default my-scheduler); "
        "'' for the default scheduler",
    )
    parser.add_argument(
        "--prometheus-url",
        help="Prometheus the autoscaler reads (e.g. http://prometheus:9090); '' or unset: "
        "autoscaled pools are held at replicas.min",
    )
    parser.add_argument(
        "--autoscale-interval",
        type=float,
        dest="autoscale_interval_seconds",
        help="seconds between two decisions of the autoscaler per factory (default 15)",
    )
    parser.add_argument(
        "--podmonitor-label",
        action="append",
        dest="podmonitor_labels",
        metavar="KEY=VALUE",
        help="label added to every PodMonitor (repeatable), e.g. release=kube-prometheus-stack",
    )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    for key in ("liveness_endpoint", "neuron_scheduler_name", "prometheus_url"):
        if given.get(key) == "":
            given[key] = None
    if "podmonitor_labels" in given:
        pairs = [item.partition("=") for item in given["podmonitor_labels"]]
        bad = [k for k, sep, _ in pairs if not k or not sep]
        if bad:
            parser.error(f"--podmonitor-label takes KEY=VALUE, got {bad[0]!r}")
        given["podmonitor_labels"] = {k: v for k, _, v in pairs}
    return OperatorSettings(**given)


def setup_logging(settings: OperatorSettings) -> None:
    """Root logging: JSON lines (default) or plain text, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def watchable_kinds(settings: OperatorSettings) -> list[str]:
    """The kinds of ``WATCHABLE`` the operator's credentials may list and watch; the others
    are listed per reconcile (a role that predates the operator's cache), and a log line
    says which."""
    api_client = load_api_client()
    allowed = [
        kind
        for kind, (group, plural) in WATCHABLE.items()
        if may_watch(api_client, group, plural, settings.namespaces)
    ]
    missing = sorted(set(WATCHABLE) - set(allowed))
    if missing:
        log.warning(
            "may not watch %s: read per reconcile instead of from memory; grant list and "
            "watch on them to avoid it",
            ", ".join(missing),
        )
    return allowed


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``factory-operator``."""
    settings = parse_args(argv)
    setup_logging(settings)
    watch = watchable_kinds(settings)
    metrics = OperatorMetrics()
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_address, registry=metrics.registry
        )
    registry = build_registry(
        settings, lambda: Kube(load_api_client(), settings, metrics), metrics, watch
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )


if __name__ == "__main__":
    main()
