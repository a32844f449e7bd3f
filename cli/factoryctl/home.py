"""A fleet home: the folder that keeps one local fleet's state, names and ports apart.

Chosen by `--home` or `$FACTORY_HOME`, else `~/.local/share/inference-factory/fleet`.
Tests use a home of their own, so they never touch a developer's running fleet.

    <home>/kwok/          kwokctl's work dir (clusters/<name>/kubeconfig.yaml, logs, pki)
    <home>/run/           pid files of the processes the fleet started
    <home>/logs/          their logs
    <home>/state.json     ports and keys chosen once and kept, so `up` twice is harmless
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any


def default_home() -> Path:
    """$FACTORY_HOME, else the per-user default fleet."""
    if explicit := os.environ.get("FACTORY_HOME"):
        return Path(explicit)
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "inference-factory" / "fleet"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FleetHome:
    """Paths, names and persistent choices of one local fleet."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        self.cluster_name = f"factory-{digest}"

    @property
    def kwok_workdir(self) -> Path:
        return self.root / "kwok"

    @property
    def kubeconfig(self) -> Path:
        return self.kwok_workdir / "clusters" / self.cluster_name / "kubeconfig.yaml"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> None:
        for folder in (self.root, self.run_dir, self.logs_dir, self.kwok_workdir):
            folder.mkdir(parents=True, exist_ok=True)

    def _state_path(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def save_state(self, state: dict[str, Any]) -> None:
        self.ensure()
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self._state_path())

    def port(self, name: str) -> int:
        """The port kept for `name` in this home, chosen once."""
        state = self.state()
        ports: dict[str, int] = state.setdefault("ports", {})
        if name not in ports:
            ports[name] = free_port()
            self.save_state(state)
        return ports[name]
