"""The benchmark command lines refuse bad sizes with a message naming the flag (no run starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("module", "args", "flag"), [
    ("bench", ["--events", "0"], "--events"),
    ("bench", ["--latency-rate", "abc"], "--latency-rate"),
    ("bench.seed", ["--docs", "many"], "--docs"),
    ("bench.webhook", ["--pods", "-"], "--pods"),
    ("bench.peer", ["--events", "0"], "--events"),
    ("bench.peer", ["--events", "lots"], "--events"),
    ("bench.peer", ["--entities", "-3"], "--entities"),
    ("bench.peer", ["--warmup", "0"], "--warmup"),
    ("bench.peer", ["--idle-seconds", "0"], "--idle-seconds"),
    ("bench.peer", ["--stall-seconds", "-1"], "--stall-seconds"),
    ("bench.peer", ["--stall-seconds", "nan"], "--stall-seconds"),
    ("bench.peer", ["--ordering", "sideways"], "--ordering"),
    ("bench.peer", ["--java", "/nonexistent/bin/java"], "--java"),
])
def test_bad_size_is_refused(module: str, args: list[str], flag: str) -> None:
    result = run(module, args)
    assert result.returncode != 0
    assert flag in result.stderr
    assert "[stack]" not in result.stderr  # refused before any server started
    assert "[debezium]" not in result.stderr  # and before Debezium Server was fetched


def test_peer_refuses_a_java_older_than_21(tmp_path: Path) -> None:
    """A JDK is told by its ``release`` file; Debezium Server 3.x needs 21 or later."""
    jdk = tmp_path / "jdk-17"
    (jdk / "bin").mkdir(parents=True)
    java = jdk / "bin" / "java"
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    (jdk / "release").write_text('JAVA_VERSION="17.0.15"\n')
    result = run("bench.peer", ["--java", str(java)])
    assert result.returncode != 0
    assert "--java" in result.stderr
    assert "Java 17" in result.stderr
    assert "21" in result.stderr
    assert "[debezium]" not in result.stderr
