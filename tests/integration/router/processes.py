"""What the router's integration tests share: ending the processes they start and reading
the router's /metrics text (the port comes from `factoryctl.home.free_port`)."""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def metric_sum(text: str, name: str, *label_parts: str) -> float:
    """The sum of a metric's samples whose labels contain every one of `label_parts`."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        labels = match.group(1) or ""
        if all(part in labels for part in label_parts):
            total += float(match.group(2))
    return total
