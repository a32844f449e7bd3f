"""`helm test`: the router answers its bare /readyz with 200 and the operator's /metrics carries
its own series. Retries until a deadline (pods may have just turned Ready); exits 1 with what
failed. Standard library only: it runs in the router's image."""

import os
import sys
import time
import urllib.request

DEADLINE_SECONDS = float(os.environ.get("CHECK_DEADLINE_SECONDS", "60"))
CHECKS = [
    (os.environ["ROUTER_READYZ_URL"], None),
    (os.environ["OPERATOR_METRICS_URL"], "factory_operator_"),
]


def check(url, needle):
    """None when the URL answers 200 (with needle in its body), else what went wrong."""
    if not url.startswith("http://"):
        return f"{url}: not an http:// URL"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - http only
            body = answer.read().decode("utf-8", "replace")
    except Exception as err:  # any failure is reported and retried
        return f"{url}: {err}"
    if needle and needle not in body:
        return f"{url}: answered without {needle!r} series"
    return None


def main():
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        failures = [f for f in (check(url, needle) for url, needle in CHECKS) if f]
        if not failures:
            print("ok: router ready, operator metrics served")
            return 0
        if time.monotonic() > deadline:
            print("\n".join(failures), file=sys.stderr)
            return 1
        time.sleep(2)


sys.exit(main())
