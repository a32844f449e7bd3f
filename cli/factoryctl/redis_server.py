"""Redis for the routers' shared quotas: Debian bookworm's `redis-server`, in the cache.

    <cache>/redis-7.0/root/...       Debian's packages, extracted with `dpkg-deb -x`
    <cache>/redis-7.0/bin/redis-server   a wrapper: LD_LIBRARY_PATH on the extracted
                                         libraries, then Debian's binary

No root is needed: `apt-get download` fetches `redis-server` and `redis-tools` (Debian's
`redis-server` is a link to `redis-check-rdb`, which acts on the name it is run by) and
each library of theirs that the machine lacks (`ldd` says which: on Debian bookworm,
`libjemalloc2` and `liblzf1`). Without package lists to find them (a fresh machine), root
runs `apt-get update` first; anyone else is told what to run. A `redis-server` on PATH
that reports the pinned major.minor is used as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from factoryctl.errors import ToolchainError
from factoryctl.toolchain import Progress, default_cache_dir

REDIS_VERSION = "7.0"  # Debian bookworm's (7.0.15); the router's scripts need >= 5 (TIME)
PACKAGES = ("redis-server", "redis-tools")
LIBRARY_PACKAGES = {"libjemalloc.so.2": "libjemalloc2", "liblzf.so.1": "liblzf1"}
_TIMEOUT_S = 300


def _folder(cache: Path) -> Path:
    return cache / f"redis-{REDIS_VERSION}"


def matches_pin(binary: Path) -> bool:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(rf"v={re.escape(REDIS_VERSION)}\.\d", done.stdout))


def find_redis(cache: Path | None = None) -> Path | None:
    """A `redis-server` of the pinned version: the cache's, else PATH's; None otherwise."""
    cached = _folder(cache or default_cache_dir()) / "bin" / "redis-server"
    if matches_pin(cached):
        return cached
    on_path = shutil.which("redis-server")
    if on_path and matches_pin(Path(on_path)):
        return Path(on_path)
    return None


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )


def _download(names: list[str], into: Path, progress: Progress) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolchainError(
            "redis-server is not installed and this machine has no apt-get/dpkg-deb",
            hint="install Redis >= 7.0 so that `redis-server` is on PATH, then rerun",
        )
    done = _run(["apt-get", "download", *names], cwd=into)
    if done.returncode != 0 and os.geteuid() == 0:
        progress("redis: no package lists yet; running apt-get update")
        _run(["apt-get", "update", "-qq"])
        done = _run(["apt-get", "download", *names], cwd=into)
    if done.returncode != 0:
        raise ToolchainError(
            f"apt-get download {' '.join(names)} failed: {done.stderr.strip()[-500:]}",
            hint="run `sudo apt-get update` (or `sudo apt-get install -y redis-server`), then "
            "rerun `factoryctl dev tools`",
        )


def _missing_libraries(binary: Path, libdir: Path) -> list[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    done = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    return re.findall(r"^\s*(\S+) => not found", done.stdout, re.M)


def _extract(debs: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        done = _run(["dpkg-deb", "-x", str(deb), str(root)])
        if done.returncode != 0:
            raise ToolchainError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")


def ensure_redis(progress: Progress, cache: Path | None = None) -> Path:
    """The pinned `redis-server`, installed into the cache when missing."""
    found = find_redis(cache)
    if found is not None:
        progress(f"redis-{REDIS_VERSION}: ready")
        return found
    folder = _folder(cache or default_cache_dir())
    progress(f"installing redis-{REDIS_VERSION} from Debian's packages into {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    root, bin_dir = folder / "root", folder / "bin"
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    with tempfile.TemporaryDirectory(prefix="redis-debs-") as tmp:
        debs = Path(tmp)
        _download(list(PACKAGES), debs, progress)
        _extract(debs, root)
        real = root / "usr" / "bin" / "redis-server"
        wanted = sorted(
            {
                LIBRARY_PACKAGES[lib]
                for lib in _missing_libraries(real, libdir)
                if lib in LIBRARY_PACKAGES
            }
        )
        if wanted:
            for deb in debs.glob("*.deb"):
                deb.unlink()
            _download(wanted, debs, progress)
            _extract(debs, root)
    still = _missing_libraries(real, libdir)
    if still:
        raise ToolchainError(
            f"redis-server needs libraries this machine lacks: {', '.join(still)}",
            hint="install them with apt-get, or `sudo apt-get install -y redis-server`",
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "redis-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'export LD_LIBRARY_PATH="{libdir}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    if not matches_pin(wrapper):
        raise ToolchainError(
            f"installed {wrapper} but it does not report Redis {REDIS_VERSION}",
            hint=f"remove {folder} and rerun `factoryctl dev tools`",
        )
    progress(f"redis-{REDIS_VERSION}: installed")
    return wrapper
