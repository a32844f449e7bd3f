"""Reload the tenants and static backends files when they change (key rotation without a
restart). A file that fails to parse is rejected and the previous good one kept: a broken
edit must never turn into allow-all, nor into an outage.

Nothing stops a watcher but its cancellation: a file that is missing for a moment (a
Secret volume swaps a symlink; an editor writes a new file and renames it), unreadable,
or that a loader or an `apply` fails on for any reason is logged and counted
(`on_error`, behind `factory_router_config_reload_errors_total`), the previous value stays
and the file is read again on its next change. A missing file is counted once, not once
per check, and its return is a change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from factory_router.app.logs import redact
from factory_router.policy.errors import PolicyError

log = logging.getLogger("factory_router.reload")
T = TypeVar("T")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileWatcher(Generic[T]):
    def __init__(
        self,
        name: str,
        path: Path,
        load: Callable[[Path], T],
        apply: Callable[[T], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.name = name
        self.path = path
        self._load = load
        self._apply = apply
        self._on_error = on_error
        self._stamp = _stamp(path)

    def check(self) -> bool:
        """Reload if the file changed; True when a new version was applied."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self._load(self.path)
            self._apply(value)
        except PolicyError as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # any failure: keep the previous value
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        log.info("reloaded %s from %s", self.name, self.path)
        return True

    def _failed(self, message: str) -> None:
        message = redact(message)
        log.error("rejected %s reload, keeping the previous one: %s", self.name, message)
        self._on_error(message)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a failing on_error must not end the watcher either
                log.exception("%s watcher: check failed; watching on", self.name)
