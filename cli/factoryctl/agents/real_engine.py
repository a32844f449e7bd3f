"""Real vLLM engines behind the engine pods of the local fleet's real-engine nodes.

A node pool marked `engine: vllm` in the topology (label and NoSchedule taint
`inference.factory.dev/local-engine=vllm`) is served by the pinned real vLLM (CPU build) and
the tiny model that `factoryctl dev vllm` makes, not by the simulator. The engines agent
starts, for each running pod on such a node, **the command line the operator generated for the
pod**, read from its spec, with only what a CPU machine forces changed: every change is listed
in `factoryctl.agents.vllm_command.SUBSTITUTIONS`, and the agent logs each one it makes.

Each engine is a process of the fleet (`factoryctl.procs`: its own session, a pid file, its
log in `<home>/logs/vllm-<pod uid>.log`), so a restarted agent adopts what runs and
`factoryctl dev down` stops what is left, including engine processes that outlived a
`vllm serve` that died. The agent plays the kubelet for it:

- the pod's own probes from its spec: Ready while `/health` answers within the readiness
  budget (periodSeconds x failureThreshold), killed and started again when it is silent
  beyond the liveness budget, or never answers within the startup budget;
- an engine that exits is started again after a back-off that doubles up to five minutes
  (CrashLoopBackOff; ten minutes of running reset it), its last log lines in the agent's log
  and in an Event on the pod;
- a pod that is gone gets its preStop sleep, then SIGTERM to `vllm serve` alone, as the
  container runtime signals PID 1 (vLLM finishes in-flight requests within
  `--shutdown-timeout`), then SIGKILL to all of it at the end of its grace period.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from factoryctl import procs
from factoryctl.agents.vllm_command import (
    ENGINE_ENV,
    NotServable,
    RealEngineSetup,
    command_line,
    short_tmp,
)
from factoryctl.home import FleetHome, free_port

__all__ = ["NotServable", "RealEngineSetup", "RealEngines", "process_name"]

log = logging.getLogger("factoryctl.engines.vllm")

PROCESS_PREFIX = "vllm-"
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
BACKOFF_RESET_SECONDS = 600.0  # as the kubelet: ten minutes of running forgive past crashes
ERROR_LINES = 12
# Lines of an access log (uvicorn's), which say nothing of why an engine stopped.
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) \S+ HTTP/')


def process_name(uid: str) -> str:
    return f"{PROCESS_PREFIX}{uid}"


def _port_of(argv: list[str]) -> int | None:
    for flag, value in pairwise(argv):
        if flag == "--port" and value.isdigit():
            return int(value)
    return None


def last_lines(path: Path, count: int = ERROR_LINES) -> str:
    """The end of an engine's log, where vLLM writes why it stopped (access-log lines left
    out: a scrape every second would push the reason out)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    kept = [line for line in lines if line.strip() and not ACCESS_LINE.search(line)]
    return "\n".join(kept[-count:])


@dataclass
class EngineRun:
    """One pod's real engine, as the agent sees it."""

    uid: str
    port: int | None = None
    started: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    error: str | None = None  # why the last run ended, the engine's own words
    # Set once the pod is gone: when SIGTERM is due, and when SIGKILL is.
    term_at: float | None = None
    kill_at: float | None = None
    substitutions: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None  # None for one a previous agent started
    last_ok: float | None = None  # when it last answered /health (None: not yet, this run)


@dataclass(frozen=True)
class Verdict:
    """The probes' verdict on a running engine."""

    ready: bool
    restart: str | None = None  # why it was killed (liveness or startup budget spent)


def _budget(container: dict[str, Any], probe: str, default: float) -> float:
    """periodSeconds x failureThreshold of one of the container's probes."""
    spec = container.get(probe) or {}
    if not spec:
        return default
    return float(spec.get("periodSeconds", 10)) * float(spec.get("failureThreshold", 3))


@dataclass(frozen=True)
class Poll:
    """What one pass found for a pod's engine."""

    port: int | None  # where it listens (or will), None while backing off
    running: bool
    exited_now: str | None = None  # set once, on the pass that saw it exit: why


class RealEngines:
    """Starts, watches and drains the real engines, one per pod uid."""

    def __init__(
        self,
        home: FleetHome,
        setup: RealEngineSetup,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.setup = setup
        self.clock = clock
        self.runs: dict[str, EngineRun] = {}
        for name in procs.names(home):  # adopt what a previous agent started
            if name.startswith(PROCESS_PREFIX):
                uid = name.removeprefix(PROCESS_PREFIX)
                argv = procs.recorded_argv(home, name) or []
                self.runs[uid] = EngineRun(uid, port=_port_of(argv), started=clock())

    def poll(self, pod: dict[str, Any]) -> Poll:
        """Start the pod's engine if it should run and does not; say how it is."""
        uid = pod["metadata"]["uid"]
        run = self.runs.setdefault(uid, EngineRun(uid))
        name = process_name(uid)
        code = run.process.poll() if run.process is not None else None
        if code is None and procs.running_pid(self.home, name) is not None:
            if run.started is not None and self.clock() - run.started > BACKOFF_RESET_SECONDS:
                run.failures = 0
            return Poll(run.port, running=True)
        exited = None
        if run.started is not None:  # it ran and is gone: the engine's own words say why
            # Never empty: an engine killed before it wrote a line still exited.
            exited = last_lines(procs.log_path(self.home, name)) or "(it wrote nothing)"
            if code is not None:
                exited += f"\n(exit code {code})"
            # Its engine and worker processes outlive `vllm serve` when it dies hard: end
            # them, as the end of a container ends every process in it.
            procs.reap_session(self.home, name)
            procs.forget(self.home, name)
            run.process = None
            run.started = None
            run.error = exited
            run.failures += 1
            delay = min(BACKOFF_FIRST_SECONDS * 2 ** (run.failures - 1), BACKOFF_MAX_SECONDS)
            run.retry_at = self.clock() + delay
            log.warning(
                "real engine of pod %s/%s exited; starting it again in %.0fs. Its last words:\n%s",
                pod["metadata"]["namespace"], pod["metadata"]["name"], delay, exited,
            )  # fmt: skip
            return Poll(None, running=False, exited_now=exited)
        if self.clock() < run.retry_at:
            return Poll(None, running=False)
        self._start(pod, run)
        return Poll(run.port, running=run.started is not None)

    def _start(self, pod: dict[str, Any], run: EngineRun) -> None:
        folder = self.setup.work / run.uid
        port = free_port()
        launch = command_line(pod["spec"]["containers"][0], self.setup, port, folder)
        for relative in ENGINE_ENV.values():
            (folder / relative).mkdir(parents=True, exist_ok=True)
        short_tmp(folder).mkdir(parents=True, exist_ok=True)
        run.process = procs.spawn(
            self.home, process_name(run.uid), launch.argv, env=launch.env, cwd=folder,
            inherit_env=False,
        )  # fmt: skip
        run.port, run.started, run.substitutions = port, self.clock(), launch.substitutions
        run.last_ok = None
        log.info(
            "real engine of pod %s/%s on port %d: %s\n  substitutions: %s",
            pod["metadata"]["namespace"], pod["metadata"]["name"], port,
            " ".join(launch.argv), "; ".join(launch.substitutions),
        )  # fmt: skip

    def release(self, uid: str, pod: dict[str, Any] | None = None) -> bool:
        """The pod is gone (or no longer wants its engine): drain and stop it as the kubelet
        would. Returns True once nothing of it is left."""
        run = self.runs.get(uid)
        name = process_name(uid)
        if run is not None and run.process is not None:
            run.process.poll()  # reap it if it has exited
        if run is None or procs.running_pid(self.home, name) is None:
            if run is not None and run.process is not None:
                run.process.wait(5)  # it has exited (perhaps just now): reap it
            procs.reap_session(self.home, name)
            procs.forget(self.home, name)
            self.runs.pop(uid, None)
            self._clean(uid)
            return True
        now = self.clock()
        if run.term_at is None:
            prestop, grace = _termination(pod)
            run.term_at, run.kill_at = now + prestop, now + grace
        if run.kill_at is not None and now >= run.kill_at:
            procs.send_signal(self.home, name, signal.SIGKILL, group=True)
        elif now >= run.term_at:
            # To `vllm serve` alone, as the runtime signals a container's PID 1: the API
            # server then drains and stops its engine processes itself (a SIGTERM to the whole
            # group kills the engine core under the streams it is finishing).
            procs.send_signal(self.home, name, signal.SIGTERM, group=False)
        return False

    def probe(self, pod: dict[str, Any], answers: bool) -> Verdict:
        """Apply the pod's readiness, liveness and startup probes to a running engine, given
        whether it answered /health now; an engine out of its liveness or startup budget is
        killed (the next poll starts it again after the back-off)."""
        run = self.runs[pod["metadata"]["uid"]]
        now = self.clock()
        if answers:
            run.last_ok = now
            return Verdict(ready=True)
        container = pod["spec"]["containers"][0]
        if run.last_ok is None:
            budget = _budget(container, "startupProbe", float("inf"))
            if run.started is not None and now - run.started > budget:
                self._kill(run.uid)
                return Verdict(False, f"Startup probe failed: no answer in {budget:.0f}s")
            return Verdict(ready=False)
        silent = now - run.last_ok
        if silent > _budget(container, "livenessProbe", float("inf")):
            self._kill(run.uid)
            return Verdict(False, f"Liveness probe failed: no answer for {silent:.0f}s")
        return Verdict(ready=silent <= _budget(container, "readinessProbe", 0.0))

    def _kill(self, uid: str) -> None:
        procs.send_signal(self.home, process_name(uid), signal.SIGKILL, group=True)
        self.runs[uid].last_ok = None

    def uids(self) -> set[str]:
        return set(self.runs)

    def stop_all(self) -> None:
        for uid, run in list(self.runs.items()):
            procs.stop(self.home, process_name(uid), grace=30)
            if run.process is not None:
                run.process.wait(5)
            self.runs.pop(uid, None)
            self._clean(uid)

    def _clean(self, uid: str) -> None:
        """The pod is gone: so are its engine's folders (as its emptyDir volumes)."""
        folder = self.setup.work / uid
        shutil.rmtree(short_tmp(folder), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


# When the agent first sees a pod gone it no longer has its spec: the operator's defaults.
DEFAULT_PRESTOP_SECONDS = 5
DEFAULT_GRACE_SECONDS = 60


def _termination(pod: dict[str, Any] | None) -> tuple[float, float]:
    """(preStop sleep, termination grace period) of a pod, as the kubelet applies them."""
    if pod is None:
        return DEFAULT_PRESTOP_SECONDS, DEFAULT_GRACE_SECONDS
    spec = pod["spec"]
    grace = float(spec.get("terminationGracePeriodSeconds", 30))
    container = spec["containers"][0]
    sleep = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return min(float(sleep.get("seconds", 0)), grace), grace


def stop_all_recorded(home: FleetHome) -> int:
    """Stop every real engine of a home, and what is left of engines that died (for `dev
    down`, with or without an agent); their temporary folders go too."""
    stopped = 0
    for name in procs.names(home):
        if not name.startswith(PROCESS_PREFIX):
            continue
        if procs.stop(home, name, grace=30):
            stopped += 1
        uid = name.removeprefix(PROCESS_PREFIX)
        shutil.rmtree(short_tmp(Path(uid)), ignore_errors=True)
    return stopped
