"""The benchmark command lines refuse bad sizes with a message naming the flag (no run starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("module", "args", "flag"), [
    ("bench", ["--events", "0"], "--events"),
    ("bench", ["--latency-rate", "abc"], "--latency-rate"),
    ("bench.seed", ["--docs", "many"], "--docs"),
    ("bench.webhook", ["--pods", "-"], "--pods"),
])
def test_bad_size_is_refused(module: str, args: list[str], flag: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert flag in result.stderr
    assert "[stack]" not in result.stderr  # refused before any server started
