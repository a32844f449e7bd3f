"""The pinned control-plane toolchain: find it, or build it from the Go module proxy.

Binaries live in a cache outside the repository, keyed by version:

    <cache>/kubernetes-v1.34.4/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
    <cache>/etcd-v3.6.16/bin/etcd
    <cache>/kwok-v0.8.0/bin/{kwok,kwokctl}
    <cache>/helm-v3.21.4/bin/helm
    <cache>/kubeconform-v0.8.0/bin/kubeconform      the validators CI runs on the chart, the
    <cache>/kube-score-v1.20.0/bin/kube-score       GitOps overlays and the generated workloads
    <cache>/kubernetes-schemas-v1.34-kv1.37.0/      kubeconform's schemas (factoryctl.kube_schemas)
    <cache>/go/{mod,build}        the Go module and build caches, so a rebuild is incremental

A binary is reused when its `--version` matches the pin, from the cache or from PATH;
otherwise it is built. Kubernetes needs a small generated wrapper module that replaces every
`k8s.io/*` staging module with its published version (the staging replaces of
k8s.io/kubernetes point at local folders and are ignored in a dependency); it is built
statically with version ldflags so `kubectl version` and Helm see a real version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factoryctl.errors import ToolchainError
from factoryctl.kube_schemas import ensure_schemas, find_schemas

KUBERNETES_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"
HELM_VERSION = "3.21.4"
KUBECONFORM_VERSION = "0.8.0"
KUBE_SCORE_VERSION = "1.20.0"

# Staging modules of k8s.io/kubernetes 1.34 (its go.mod `replace` block).
K8S_STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
)

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# A fixed build date keeps the ldflags, and so the Go build cache, stable across rebuilds.
BUILD_DATE = "2026-01-01T00:00:00Z"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """The toolchain cache: $FACTORY_TOOLS_CACHE, else $XDG_CACHE_HOME/inference-factory."""
    if explicit := os.environ.get("FACTORY_TOOLS_CACHE"):
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "inference-factory" / "toolchain"


@dataclass(frozen=True)
class Toolchain:
    """Paths of every pinned binary, all verified."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwokctl: Path
    helm: Path
    kubeconform: Path
    kube_score: Path
    kubernetes_schemas: Path

    def as_dict(self) -> dict[str, str]:
        return {name.replace("_", "-"): str(path) for name, path in self.__dict__.items()}


def _version_of(binary: Path, args: tuple[str, ...]) -> str:
    try:
        done = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


# How each binary states its version, and the text that proves the pin.
_PROBES: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "kube-apiserver": (("--version",), lambda: f"Kubernetes v{KUBERNETES_VERSION}"),
    "kube-controller-manager": (("--version",), lambda: f"Kubernetes v{KUBERNETES_VERSION}"),
    "kube-scheduler": (("--version",), lambda: f"Kubernetes v{KUBERNETES_VERSION}"),
    "kubectl": (("version", "--client"), lambda: f"Client Version: v{KUBERNETES_VERSION}"),
    "etcd": (("--version",), lambda: f"etcd Version: {ETCD_VERSION}"),
    "kwok": (("--version",), lambda: f"v{KWOK_VERSION}"),
    "kwokctl": (("--version",), lambda: f"v{KWOK_VERSION}"),
    "helm": (("version", "--short"), lambda: f"v{HELM_VERSION}"),
    "kubeconform": (("-v",), lambda: f"v{KUBECONFORM_VERSION}"),
    "kube-score": (("version",), lambda: f"kube-score version: v{KUBE_SCORE_VERSION}"),
}


def matches_pin(name: str, binary: Path) -> bool:
    """Whether `binary` exists and reports the pinned version of tool `name`."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    args, expected = _PROBES[name]
    return bool(re.search(rf"{re.escape(expected())}(?![0-9])", _version_of(binary, args)))


class _Builder:
    """Runs the go commands of one build step, showing progress and keeping a log."""

    def __init__(self, cache: Path, progress: Progress) -> None:
        self.cache = cache
        self.progress = progress
        go = shutil.which("go")
        if go is None:
            raise ToolchainError(
                "Go is not installed; it is needed to build the control-plane binaries",
                hint="install Go >= 1.26 (https://go.dev/doc/install) and rerun",
            )
        self.go = go
        self.env = {
            **os.environ,
            "GOMODCACHE": str(cache / "go" / "mod"),
            "GOCACHE": str(cache / "go" / "build"),
            "GOFLAGS": "-modcacherw -buildvcs=false",
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
        }

    def run(self, step: str, args: list[str], cwd: Path) -> str:
        """Run `go args...` in `cwd`; on failure raise naming the step and the log."""
        log_path = self.cache / "logs" / f"{step}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        built = 0
        lines: list[str] = []
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [self.go, *args],
                cwd=cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdout is not None
            ticker = _Ticker(self.progress, step, started, lambda: built)
            ticker.start()
            try:
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line)
                    if not line.startswith(("go: ", "#")):
                        built += 1
            finally:
                code = proc.wait()
                ticker.stop()
        if code != 0:
            tail = "".join(lines[-15:])
            raise ToolchainError(
                f"toolchain step '{step}' failed (exit {code}); full log: {log_path}\n{tail}",
                hint="fix the cause above, then rerun `factoryctl dev tools` "
                "(finished steps are kept; the Go caches make the rebuild incremental)",
            )
        self.progress(f"{step}: done in {time.monotonic() - started:.0f}s")
        return "".join(lines)


class _Ticker(threading.Thread):
    """Prints a progress line every 20 s while a long build runs."""

    def __init__(
        self, progress: Progress, step: str, started: float, count: Callable[[], int]
    ) -> None:
        super().__init__(daemon=True)
        self._progress, self._step, self._began, self._count = progress, step, started, count
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(20):
            elapsed = time.monotonic() - self._began
            self._progress(
                f"{self._step}: {elapsed:.0f}s elapsed, {self._count()} packages compiled"
            )

    def stop(self) -> None:
        self._stop_event.set()


def _kube_ldflags() -> str:
    major, minor, _ = KUBERNETES_VERSION.split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={BUILD_DATE}",
        ]
    return " ".join(flags)


def kubernetes_wrapper_gomod() -> str:
    """The go.mod of the wrapper module that pins every k8s.io staging module."""
    staging = f"0.{KUBERNETES_VERSION.split('.', 1)[1]}"
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} v{staging}" for m in K8S_STAGING_MODULES)
    return (
        "module inference-factory.local/toolchain/kubernetes\n\n"
        "go 1.24.0\n\n"
        "// Same as upstream's go.mod.\n"
        "godebug default=go1.24\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def _tools_go(package: str, imports: list[str]) -> str:
    lines = "\n".join(f'\t_ "{imp}"' for imp in imports)
    return f"//go:build tools\n\npackage {package}\n\nimport (\n{lines}\n)\n"


def _build_kubernetes(builder: _Builder, root: Path) -> None:
    wrapper = root / "wrapper"
    wrapper.mkdir(parents=True, exist_ok=True)
    (wrapper / "go.mod").write_text(kubernetes_wrapper_gomod())
    mains = [f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES]
    (wrapper / "tools.go").write_text(_tools_go("tools", mains))
    builder.run("kubernetes-mod-tidy", ["mod", "tidy"], wrapper)
    builder.run(
        "kubernetes-build",
        [
            "build",
            "-v",
            "-p",
            "2",
            "-tags",
            "selinux,notest",
            "-trimpath",
            "-ldflags",
            _kube_ldflags(),
            "-o",
            str(root / "bin") + "/",
            *mains,
        ],
        wrapper,
    )


def _build_etcd(builder: _Builder, root: Path) -> None:
    wrapper = root / "wrapper"
    wrapper.mkdir(parents=True, exist_ok=True)
    (wrapper / "go.mod").write_text(
        "module inference-factory.local/toolchain/etcd\n\ngo 1.24.0\n\n"
        f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n"
    )
    (wrapper / "tools.go").write_text(_tools_go("tools", ["go.etcd.io/etcd/server/v3"]))
    builder.run("etcd-mod-tidy", ["mod", "tidy"], wrapper)
    builder.run(
        "etcd-build",
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(root / "bin" / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        wrapper,
    )


def _go_install(builder: _Builder, root: Path, step: str, pkgs: list[str], ldflags: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    builder.env["GOBIN"] = str(root / "bin")
    try:
        builder.run(step, ["install", "-v", "-trimpath", "-ldflags", ldflags, *pkgs], root)
    finally:
        builder.env.pop("GOBIN", None)


def _helm_client_go_minor(builder: _Builder, root: Path) -> str:
    out = builder.run(
        "helm-mod-download",
        ["mod", "download", "-json", f"helm.sh/helm/v3@v{HELM_VERSION}"],
        root,
    )
    gomod = re.search(r'"GoMod":\s*"([^"]+)"', out)
    if gomod is None:
        raise ToolchainError("helm's go.mod was not found in the module cache")
    found = re.search(r"k8s\.io/client-go v0\.(\d+)\.", Path(gomod.group(1)).read_text())
    if found is None:
        raise ToolchainError("helm's go.mod does not name k8s.io/client-go")
    return found.group(1)


def _build_kwok(builder: _Builder, root: Path) -> None:
    ldflags = (
        f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v{KWOK_VERSION}"
        f" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=v{KUBERNETES_VERSION}"
    )
    pkgs = [f"sigs.k8s.io/kwok/cmd/{b}@v{KWOK_VERSION}" for b in ("kwok", "kwokctl")]
    _go_install(builder, root, "kwok-install", pkgs, ldflags)


def _build_helm(builder: _Builder, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    minor = _helm_client_go_minor(builder, root)
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}"
    ldflags += " -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        ldflags += f" -X {pkg}.k8sVersionMajor=1 -X {pkg}.k8sVersionMinor={minor}"
    _go_install(
        builder, root, "helm-install", [f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}"], ldflags
    )


def _build_kubeconform(builder: _Builder, root: Path) -> None:
    ldflags = f"-s -w -X main.version=v{KUBECONFORM_VERSION}"
    pkg = f"github.com/yannh/kubeconform/cmd/kubeconform@v{KUBECONFORM_VERSION}"
    _go_install(builder, root, "kubeconform-install", [pkg], ldflags)


def _build_kube_score(builder: _Builder, root: Path) -> None:
    ldflags = f"-s -w -X main.version=v{KUBE_SCORE_VERSION}"
    pkg = f"github.com/zegl/kube-score/cmd/kube-score@v{KUBE_SCORE_VERSION}"
    _go_install(builder, root, "kube-score-install", [pkg], ldflags)


@dataclass(frozen=True)
class _Group:
    folder: str
    binaries: tuple[str, ...]
    build: Callable[[_Builder, Path], None]


GROUPS = (
    _Group(f"kubernetes-v{KUBERNETES_VERSION}", KUBE_BINARIES, _build_kubernetes),
    _Group(f"etcd-v{ETCD_VERSION}", ("etcd",), _build_etcd),
    _Group(f"kwok-v{KWOK_VERSION}", ("kwok", "kwokctl"), _build_kwok),
    _Group(f"helm-v{HELM_VERSION}", ("helm",), _build_helm),
    _Group(f"kubeconform-v{KUBECONFORM_VERSION}", ("kubeconform",), _build_kubeconform),
    _Group(f"kube-score-v{KUBE_SCORE_VERSION}", ("kube-score",), _build_kube_score),
)


def _locate(name: str, cache_bin: Path) -> Path | None:
    """A binary matching the pin, from the cache first, then from PATH."""
    cached = cache_bin / name
    if matches_pin(name, cached):
        return cached
    on_path = shutil.which(name)
    if on_path and matches_pin(name, Path(on_path)):
        return Path(on_path)
    return None


def find_tools(cache: Path | None = None) -> Toolchain | None:
    """The verified toolchain if every binary is present, without building anything."""
    cache = cache or default_cache_dir()
    found: dict[str, Path] = {}
    for group in GROUPS:
        for name in group.binaries:
            path = _locate(name, cache / group.folder / "bin")
            if path is None:
                return None
            found[name.replace("-", "_")] = path
    schemas = find_schemas(cache, KUBERNETES_VERSION)
    if schemas is None:
        return None
    return Toolchain(**found, kubernetes_schemas=schemas)


def ensure_tools(progress: Progress, cache: Path | None = None) -> Toolchain:
    """Find every pinned binary, building the missing ones; raise ToolchainError on failure."""
    cache = cache or default_cache_dir()
    builder: _Builder | None = None
    found: dict[str, Path] = {}
    for group in GROUPS:
        root = cache / group.folder
        located = {name: _locate(name, root / "bin") for name in group.binaries}
        if any(path is None for path in located.values()):
            progress(f"building {group.folder} (cache: {root}); a cold build takes minutes")
            builder = builder or _Builder(cache, progress)
            group.build(builder, root)
            located = {name: _locate(name, root / "bin") for name in group.binaries}
            missing = [name for name, path in located.items() if path is None]
            if missing:
                raise ToolchainError(
                    f"built {group.folder} but {', '.join(missing)} does not report the pin",
                    hint=f"remove {root} and rerun `factoryctl dev tools`",
                )
        else:
            progress(f"{group.folder}: ready")
        for name, path in located.items():
            if path is not None:
                found[name.replace("-", "_")] = path
    schemas = ensure_schemas(progress, cache, KUBERNETES_VERSION)
    return Toolchain(**found, kubernetes_schemas=schemas)
