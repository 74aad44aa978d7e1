"""The Kubernetes binaries at the release pinned in ``hack/kube/go.mod``, built from the Go proxy.

``go.mod`` is the one source of the version: it requires ``k8s.io/kubernetes`` exactly once, and
replaces each staging module by the matching ``v0.<minor>.<patch>`` (checked before any build).
Each binary is built once and cached under ``<cache>/kube/<version>/`` next to a stamp of go.mod,
go.sum and the link flags; a build whose stamp matches returns at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from liberator_stack.process import (
    Say,
    StackError,
    cache_dir,
    file_lock,
    go_build_start,
    run_checked,
)

__all__ = [
    "COMPONENTS",
    "apiserver_path",
    "binary_path",
    "build_components",
    "check_staging_replaces",
    "pinned_version",
    "read_go_mod",
]

MODULE_DIR = Path(__file__).resolve().parents[1] / "kube"
PACKAGE_ROOT = "k8s.io/kubernetes/cmd"
# The programs hack/kube/tools.go pins, with the minutes a clean build takes on 2 cores (the
# apiserver ~5 min after ~15 s of downloads; the others with its build cache warm, measured).
COMPONENTS = {
    "kube-apiserver": 6,
    "kube-controller-manager": 2,
    "kube-scheduler": 1,
    "kube-proxy": 1,
    "kubelet": 2,
}

_REQUIRE = re.compile(
    r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v1\.(\d+)\.(\d+))\s*(?://.*)?$", re.MULTILINE
)
_REPLACE = re.compile(
    r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+(\S+)(?:\s+(\S+))?\s*$", re.MULTILINE
)


# -- the pinned release ---------------------------------------------------------------------------


def read_go_mod() -> str:
    path = MODULE_DIR / "go.mod"
    try:
        return path.read_text()
    except OSError as error:
        raise StackError(f"cannot read {path} (the kube-apiserver build module): {error}") from None


def pinned_version(go_mod: str) -> str:
    """The ``k8s.io/kubernetes`` version required by the build module's go.mod text."""
    found = _REQUIRE.findall(go_mod)
    if len(found) != 1:
        raise StackError(
            "hack/kube/go.mod must require k8s.io/kubernetes exactly once, as "
            f"'require k8s.io/kubernetes v1.<minor>.<patch>'; found {len(found)}"
        )
    return str(found[0][0])


def check_staging_replaces(go_mod: str, version: str) -> None:
    """Each k8s.io staging module must be replaced by its release matching ``version``.

    k8s.io/kubernetes points them at folders of its own repository (absent from the proxy's zip);
    a mismatched release compiles against the wrong API and fails late, so fail early instead.
    """
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if match is None:
        raise StackError(
            f"k8s.io/kubernetes version {version!r} in hack/kube/go.mod is not v1.<minor>.<patch>"
        )
    want = f"v0.{match[1]}.{match[2]}"
    replaces = _REPLACE.findall(go_mod)
    if not replaces:
        raise StackError(
            "hack/kube/go.mod has no 'replace k8s.io/<name> => k8s.io/<name> "
            f"{want}' lines; add one per staging module of k8s.io/kubernetes "
            f"{version}"
        )
    for name, target, target_version in replaces:
        if target != name or target_version != want:
            raise StackError(
                f"hack/kube/go.mod: replace {name} => {target} {target_version} "
                f"should be '{name} => {name} {want}' for k8s.io/kubernetes "
                f"{version}"
            )


def binary_path(name: str, version: str) -> Path:
    """Where the built ``name`` (one of :data:`COMPONENTS`) of ``version`` is cached."""
    return cache_dir() / "kube" / version / name


def apiserver_path(version: str) -> Path:
    return binary_path("kube-apiserver", version)


def _ldflags(version: str) -> str:
    # Without these the binary reports v0.0.0-master on /version, and clients that gate on the
    # server version (native sidecars, kubectl skew warnings) would misjudge it.
    major, minor, _ = version.lstrip("v").split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _stamp(version: str) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE_DIR / name).read_bytes())
    digest.update(_ldflags(version).encode())
    return digest.hexdigest()


# -- build ----------------------------------------------------------------------------------------


def build_components(say: Say, names: Sequence[str]) -> None:
    """Build each of ``names`` (from :data:`COMPONENTS`) at the pinned release, once (cached)."""
    go_mod = read_go_mod()
    version = pinned_version(go_mod)
    check_staging_replaces(go_mod, version)
    stamp = _stamp(version)
    for name in names:
        if name not in COMPONENTS:
            raise StackError(
                f"unknown Kubernetes component {name!r}; choose from {', '.join(COMPONENTS)}"
            )
        _build_one(say, name, version, stamp)


def _build_one(say: Say, name: str, version: str, stamp: str) -> None:
    target = binary_path(name, version)
    stamp_file = target.with_name(f"{name}.stamp")
    # Two runs on one cache (a test session and make test) would race on the .partial file.
    with file_lock(target.with_name(f"{name}.lock")):
        if target.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
            return
        _go_build(say, name, version, target)
        stamp_file.write_text(stamp + "\n")


def _go_build(say: Say, name: str, version: str, target: Path) -> None:
    go, log = go_build_start(say, name, version, COMPONENTS[name])
    env = dict(os.environ)
    # -mod=mod lets go fill in go.sum entries a newer Go wants; go.sum pins the content anyway.
    env["GOFLAGS"] = f"{env.get('GOFLAGS', '')} -mod=mod -buildvcs=false".strip()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{name}.partial")
    started = time.monotonic()
    run_checked(
        [
            go,
            "build",
            "-p",
            "2",
            "-trimpath",
            f"-ldflags={_ldflags(version)}",
            "-o",
            str(partial),
            f"{PACKAGE_ROOT}/{name}",
        ],
        cwd=MODULE_DIR,
        log=log,
        env=env,
        what=f"go build {name} {version}",
    )
    os.replace(partial, target)
    say(f"built {name} {version} in {time.monotonic() - started:.0f}s: {target}")
