"""What runs on this machine: processes by command line, and their listening TCP ports."""

from __future__ import annotations

import os
from pathlib import Path


def pids_mentioning(text: str) -> set[int]:
    """Pids of live processes whose command line contains `text`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except (FileNotFoundError, PermissionError):
        pass
    return inodes


def listening_ports(pids: set[int] | None = None) -> set[int]:
    """TCP ports in LISTEN state, of the given pids or of everything."""
    wanted = set().union(*(_socket_inodes(p) for p in pids)) if pids else None
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            if wanted is not None and fields[9] not in wanted:
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
