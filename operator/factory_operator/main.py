"""``factory-operator``: run the operator with settings from flags and FACTORY_OPERATOR_* env.

Every setting of ``OperatorSettings`` is a flag (derived from the model: one definition of
name, type, default and meaning) and an environment variable; flags override the
environment. Logs are JSON lines by default; /metrics is served by
prometheus_client from the operator's own registry; kopf's liveness endpoint is optional.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Literal, get_args, get_origin

import kopf
from prometheus_client import start_http_server
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from factory_operator.handlers import WATCHABLE, build_registry
from factory_operator.k8s import Kube, OperatorMetrics, load_api_client, may_watch
from factory_operator.plan import OperatorSettings
from factory_operator.plan.settings import ENV_ONLY_SETTINGS

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


# The flags are the settings' fields (``plan.settings.OperatorSettings``: type, default,
# description, validation), each as ``--<field-in-kebab-case>``, except these names, kept
# from before the flags were derived (the chart, factoryctl and scripts pass them).
FLAG_NAMES: dict[str, tuple[str, ...]] = {
    "namespaces": ("--namespace", "-n"),
    "api_timeout_seconds": ("--api-timeout",),
    "api_connect_timeout_seconds": ("--api-connect-timeout",),
    "resync_seconds": ("--resync",),
    "liveness_endpoint": ("--liveness",),
    "autoscale_interval_seconds": ("--autoscale-interval",),
    "rollout_interval_seconds": ("--rollout-interval",),
    "podmonitor_labels": ("--podmonitor-label",),
    "neuron_images": ("--neuron-image",),
}
CHOICES: dict[str, tuple[str, ...]] = {"log_format": ("json", "plain")}  # its pattern's


def _flag(name: str, field: FieldInfo) -> tuple[tuple[str, ...], dict[str, Any]]:
    env = f"FACTORY_OPERATOR_{name.upper()}"
    default = field.get_default(call_default_factory=True)
    shown = "none" if default in (None, "", [], {}) else default
    options: dict[str, Any] = {"dest": name, "help": f"{field.description} [{env}; {shown}]"}
    kind = field.annotation
    args = [a for a in get_args(kind) if a is not type(None)]
    if get_origin(kind) is list:
        options.update(action="append", metavar=name.removesuffix("s").upper())
    elif get_origin(kind) is dict:
        options.update(action="append", metavar="KEY=VALUE")
    elif kind is bool:
        options.update(action=argparse.BooleanOptionalAction)
    elif get_origin(kind) is Literal or name in CHOICES:
        options.update(choices=CHOICES.get(name) or get_args(kind))
    elif len(args) == 1 and get_origin(args[0]) is None:  # X | None
        options.update(type=args[0])
    elif kind in (int, float, str):
        options.update(type=kind)
    flags = FLAG_NAMES.get(name, (f"--{name.replace('_', '-')}",))
    return flags, options


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting."""
    parser = argparse.ArgumentParser(
        prog="factory-operator",
        description=__doc__,
        epilog="Each flag is also the environment variable in brackets; flags win. An empty "
        "value of an optional setting (e.g. --prometheus-url '') means none.",
    )
    for name, field in OperatorSettings.model_fields.items():
        if name in ENV_ONLY_SETTINGS:
            continue  # secrets: environment only (a flag shows in `ps`)
        flags, options = _flag(name, field)
        parser.add_argument(*flags, **options)
    return parser


def parse_args(argv: list[str] | None = None) -> OperatorSettings:
    """Flags -> settings (unset flags fall back to the environment, then the defaults)."""
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    for name, field in OperatorSettings.model_fields.items():
        if name not in given:
            continue
        if given[name] == "" and type(None) in get_args(field.annotation):
            given[name] = None
        elif get_origin(field.annotation) is dict:
            pairs = [item.partition("=") for item in given[name]]
            bad = [k for k, sep, _ in pairs if not k or not sep]
            if bad:
                parser.error(f"{FLAG_NAMES.get(name, (name,))[0]} takes KEY=VALUE, got {bad[0]!r}")
            # Over the default table (a type not named keeps its default image).
            default = field.get_default(call_default_factory=True)
            given[name] = {**default, **{k: v for k, _, v in pairs}}
    try:
        return OperatorSettings(**given)
    except ValidationError as err:
        parser.error(str(err))


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
