"""The benchmark command lines refuse bad sizes with a message naming the flag (no run starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return commands.run([sys.executable, "-m", module, *args], cwd=ROOT, timeout=60)


@pytest.mark.parametrize(
    ("module", "args", "flag"),
    [
        ("bench", ["--events", "0"], "--events"),
        ("bench", ["--latency-rate", "abc"], "--latency-rate"),
        ("bench", ["--oplog-ops", "0"], "--oplog-ops"),
        ("bench", ["--oplog-sizes", "10k"], "--oplog-sizes"),
        ("bench", ["--oplog-sizes", "10000,0"], "--oplog-sizes"),
        ("bench", ["--skip", "oplogs"], "--skip"),
        ("bench", ["--only", "getmore"], "--only"),
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
    ],
)
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


def test_peer_counts_a_message_by_the_seq_of_its_document() -> None:
    """The peer bench's measure keys each pulled message by ``seq``, in both systems' shapes."""
    from bench.pull import seq_of  # noqa: PLC0415  (the module imports grpc lazily)

    liberator = b'{"_id":{"$oid":"6b0f"},"quoteId":"q-7","version":1,"seq":1007,"amount":1.5}'
    debezium = (
        b'{"schema":{},"payload":{"before":null,"after":"{\\"_id\\": {\\"$oid\\": '
        b'\\"6b0f\\"},\\"quoteId\\": \\"q-7\\",\\"seq\\": 1007,\\"amount\\": 1.5}"}}'
    )
    canonical = b'{"after":"{\\"seq\\": {\\"$numberInt\\": \\"1007\\"}}"}'
    assert seq_of(liberator) == seq_of(debezium) == seq_of(canonical) == 1007
    assert seq_of(b'{"quoteId":"q-7"}') is None


def test_peer_table_shows_a_failed_run_and_no_ratio_for_it() -> None:
    from bench.peer import Figures, failures, table  # noqa: PLC0415

    ok = Figures(
        "Liberator",
        e2e_seconds=2.0,
        drain_seconds=1.0,
        drain_first=0.5,
        drain_after_first=0.5,
        idle_rss=80 * 1024 * 1024,
        idle_millicores=4.0,
        peak_rss=100 * 1024 * 1024,
        cpu={"process": 1.0, "stand-in": 2.0, "pubsub": 1.0},
    )
    stalled = Figures(
        "Debezium (ordering on)",
        idle_rss=300 * 1024 * 1024,
        idle_millicores=30.0,
        errors={"e2e": "StalledError: stalled: 812 of 1000 events"},
    )
    text = table([ok, stalled], 1000)
    e2e = next(line for line in text.splitlines() if line.startswith("| e2e events/s"))
    assert "500" in e2e
    assert "FAILED (e2e)" in e2e
    assert e2e.rstrip(" |").endswith("-")  # no ratio against a failed run
    rss = next(line for line in text.splitlines() if line.startswith("| idle RSS"))
    assert "0.27" in rss  # 80 / 300 MiB: what the run measured before it failed still shows
    assert "812 of 1000" in failures([ok, stalled])
