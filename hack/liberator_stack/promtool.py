"""promtool from the Go module proxy: checks and unit-tests the alerting rules of
``deploy/components/monitoring`` (tests/e2e/test_monitoring.py).

Built once at the pinned Prometheus release and cached under ``<cache>/promtool/<version>/``.
Not a server: ``hack/stack build`` (no names) builds it after the servers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from liberator_stack.process import Say, cache_dir, file_lock, go_build_start, run_checked

__all__ = ["PACKAGE", "VERSION", "binary_path", "build"]

PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
VERSION = "v0.316.0"
"""The Go module version of the Prometheus release (v0.316.0 is Prometheus 3.16.0)."""
# A clean build, module downloads included: measured 14 minutes on 2 cores that a
# kube-apiserver build shared; less alone. A cached rebuild only links (~12 s).
BUILD_MINUTES = 10


def binary_path(version: str = VERSION) -> Path:
    return cache_dir() / "promtool" / version / "promtool"


def build(say: Say) -> None:
    """Build promtool at :data:`VERSION` into :func:`binary_path` (idempotent)."""
    target = binary_path()
    if target.exists():
        return
    with file_lock(target.parent / "build.lock"):
        if target.exists():  # another run built it while we waited for the lock
            return
        go, log = go_build_start(say, "promtool", VERSION, BUILD_MINUTES)
        started = time.monotonic()
        # go install writes into GOBIN; a private one next to the target, swapped in at the end,
        # so a failed or interrupted build leaves no half binary in the cache.
        work = Path(tempfile.mkdtemp(prefix="gobin.", dir=target.parent))
        try:
            env = dict(os.environ, GOBIN=str(work))
            # -mod=mod: resolve the release's own go.mod requirements, whatever the cwd holds.
            env["GOFLAGS"] = f"{env.get('GOFLAGS', '')} -mod=mod".strip()
            run_checked(
                [go, "install", f"{PACKAGE}@{VERSION}"],
                cwd=target.parent,
                log=log,
                env=env,
                what=f"go install promtool {VERSION}",
            )
            os.replace(work / "promtool", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"built promtool {VERSION} in {time.monotonic() - started:.0f}s: {target}")
