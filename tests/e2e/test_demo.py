"""``make demo`` end to end, non-interactive, with a fixed number of quotes.

The demo brings up its own stack (kube-apiserver, etcd, Mongo, Pub/Sub, Redis), runs the operator,
the injected sidecar, the event store and a seed, and exits 0 only when every expected event reached
the event store. This test also checks it leaves no process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and str(os.getpid()) != proc.name:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_NONINTERACTIVE": "1", "DEMO_QUOTES": "5",
           "LIBERATOR_STACK_DIR": str(tmp_path), "PYTHONPATH": str(ROOT / "hack")}
    env.pop("KUBECONFIG", None)
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "demo.py")], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Each step ran, the events were shown, and the seed finished.
    for step in range(1, 9):
        assert f"[{step}/9]" in output
    assert "all 9 live events stored" in output  # 5 created, 2 updated, 1 purchased, 1 deleted
    assert "quote.purchased" in output
    assert "all 4 seed events stored" in output  # 5 quotes, one deleted
    assert "EventSeed quotes-initial: phase=Succeeded seeded=4" in output
    # kubectl get entitypublishers,eventseeds -A names both kinds
    assert "entitypublisher.liberator.io/quotes" in output
    assert "eventseed.liberator.io/quotes-initial" in output
    assert processes_mentioning(str(tmp_path)) == []


def test_demo_refuses_a_bad_quote_count(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_NONINTERACTIVE": "1", "DEMO_QUOTES": "many",
           "LIBERATOR_STACK_DIR": str(tmp_path), "PYTHONPATH": str(ROOT / "hack")}
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "demo.py")], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "DEMO_QUOTES='many' is not a number" in result.stderr
    assert processes_mentioning(str(tmp_path)) == []
