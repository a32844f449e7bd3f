"""Background processes of the local fleet, tracked by pid files in the fleet home.

Each process runs in a session of its own (so a stop reaches its children), logs to
`<home>/logs/<name>.log`, and is stopped with SIGTERM, then SIGKILL after a deadline.
A pid file also records the process's start time, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from factoryctl.home import FleetHome


def _start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    # Field 22 of /proc/<pid>/stat is the start time; field 3 the state (Z: zombie).
    return None if fields[0] == "Z" else fields[19]


def _pidfile(home: FleetHome, name: str) -> Path:
    return home.run_dir / f"{name}.json"


def running_pid(home: FleetHome, name: str) -> int | None:
    """The pid of process `name` if it is still the one we started."""
    try:
        record = json.loads(_pidfile(home, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = int(record["pid"])
    if _start_time(pid) != record.get("start"):
        return None
    return pid


def start(
    home: FleetHome,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` detached as process `name` unless it already runs; return its pid."""
    if (pid := running_pid(home, name)) is not None:
        return pid
    proc = spawn(home, name, argv, env, cwd)
    proc.returncode = 0  # detached: this process neither waits for it nor warns about it
    return proc.pid


def spawn(
    home: FleetHome,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    inherit_env: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `argv` as process `name` (a pid file, its log, a session of its own) and return
    it, for a caller that watches its child (and reaps it with `poll`). `inherit_env` False:
    `env` is its whole environment."""
    home.ensure()
    log = log_path(home, name).open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**(os.environ if inherit_env else {}), **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    record = {"pid": proc.pid, "start": _start_time(proc.pid), "argv": list(argv)}
    _pidfile(home, name).write_text(json.dumps(record))
    return proc


def stop(
    home: FleetHome, name: str, grace: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> bool:
    """Stop process `name` and its session with `sig`, then SIGKILL after `grace` seconds.

    Returns True if something was running; returns once it has exited.
    """
    pid = running_pid(home, name)
    if pid is None:
        reap_session(home, name)  # what outlived a leader that died on its own
        _pidfile(home, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    _wait_gone(pid, grace)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
    reap_session(home, name)
    _pidfile(home, name).unlink(missing_ok=True)
    return True


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (state, ppid, pgrp, session, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def reap_session(home: FleetHome, name: str) -> int:
    """SIGKILL what is left of process `name`'s session once its leader is gone (children
    that outlive it: a process group is not ended by its leader's death). Only processes
    started after the leader count, and nothing is done if the leader's pid now belongs to
    another process. Returns how many were killed."""
    try:
        record = json.loads(_pidfile(home, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    leader, start = int(record["pid"]), record.get("start")
    if start is None or _start_time(leader) is not None:
        return 0  # the leader still runs (stop it first) or its pid is someone else's now
    killed = 0
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[3]) == leader and int(fields[19]) >= int(start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    _reap(pid)
    return _start_time(pid) is not None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def recorded_argv(home: FleetHome, name: str) -> list[str] | None:
    """The command line process `name` was started with, if its pid file is there (whether
    or not it still runs)."""
    try:
        return list(json.loads(_pidfile(home, name).read_text())["argv"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def forget(home: FleetHome, name: str) -> None:
    """Drop the pid file of a process that has exited."""
    _pidfile(home, name).unlink(missing_ok=True)


def send_signal(home: FleetHome, name: str, sig: signal.Signals, *, group: bool) -> bool:
    """Send `sig` to process `name` (`group`: to its whole session, as the end of a
    container; else to it alone, as a container runtime signals PID 1) without waiting;
    False if it does not run."""
    pid = running_pid(home, name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, sig)
    return True


def log_path(home: FleetHome, name: str) -> Path:
    return home.logs_dir / f"{name}.log"


def names(home: FleetHome) -> list[str]:
    """Names of every process with a pid file in this home."""
    return sorted(p.stem for p in home.run_dir.glob("*.json"))
