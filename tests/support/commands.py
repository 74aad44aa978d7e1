"""Running a command the way a test looks at it: to its end, its output captured as text."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ROOT", "hack_stack", "run", "stop"]

ROOT = Path(__file__).resolve().parents[2]


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``stdin`` as its input (none: it reads nothing); a non-zero exit is the
    test's to assert on, not an error here."""
    return subprocess.run(
        list(argv),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env=None if env is None else dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def hack_stack(
    run_dir: Path,
    *args: str,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``hack/stack ARGS`` on the run directory ``run_dir`` (after ``prefix``, such as sudo's)."""
    return run(
        [*prefix, str(ROOT / "hack" / "stack"), *args],
        env={**os.environ, "LIBERATOR_STACK_DIR": str(run_dir), **(env or {})},
        timeout=timeout,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL its process group (``start_new_session``) if it has
    not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
