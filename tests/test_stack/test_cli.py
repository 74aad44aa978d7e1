"""``hack/stack``: the command line people and scripts use to run the local stack."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.support.commands import hack_stack, run

ROOT = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_up_prints_exports_status_lists_and_down_stops(tmp_path: Path) -> None:
    up = hack_stack(tmp_path, "up", "redis")
    assert up.returncode == 0, up.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
    assert set(exports) == {"LIBERATOR_REDIS_URL"}
    assert exports["LIBERATOR_REDIS_URL"].startswith("redis://127.0.0.1:")

    status = hack_stack(tmp_path, "status")
    assert status.returncode == 0
    assert status.stdout.startswith("redis") and "running" in status.stdout
    pid = int(status.stdout.split("pids=")[1].split()[0])
    assert running(pid)
    assert hack_stack(tmp_path, "env").stdout == up.stdout  # the same settings, for another shell

    down = hack_stack(tmp_path, "down")
    assert down.returncode == 0
    assert not running(pid)
    assert hack_stack(tmp_path, "status").stdout.strip() == "nothing runs"


def test_unknown_server_is_refused_with_the_choices(tmp_path: Path) -> None:
    result = hack_stack(tmp_path, "up", "postgres")
    assert result.returncode == 2
    assert "postgres" in result.stderr
    assert "mongo" in result.stderr and "kube" in result.stderr
    assert hack_stack(tmp_path, "status").stdout.strip() == "nothing runs"  # nothing started


def test_up_mongo_without_pymongo_fails_at_once_naming_make_venv(tmp_path: Path) -> None:
    # As `hack/stack up mongo` under a system python without pymongo (before `make venv`): the
    # import is made to fail in the child only (None in sys.modules), nothing else changes.
    code = (
        "import sys, runpy; sys.modules['pymongo'] = None; "
        "sys.argv = ['liberator_stack', 'up', 'mongo']; runpy.run_module('liberator_stack', "
        "run_name='__main__')"
    )
    env = {**os.environ, "LIBERATOR_STACK_DIR": str(tmp_path), "PYTHONPATH": str(ROOT / "hack")}
    started = time.monotonic()
    result = run([sys.executable, "-c", code], env=env, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'pymongo'" in lines[0] and "make venv" in lines[0]
    assert took < 30  # not the 60 s start timeout; no server was started
    assert hack_stack(tmp_path, "status").stdout.strip() == "nothing runs"


def test_up_mongo_with_a_bad_oplog_cap_names_the_variable(tmp_path: Path) -> None:
    result = hack_stack(
        tmp_path, "up", "mongo", env={"LIBERATOR_MONGO_OPLOG_MAX_ENTRIES": "lots"}, timeout=60
    )
    assert result.returncode == 1
    assert "LIBERATOR_MONGO_OPLOG_MAX_ENTRIES must be a whole number" in result.stderr
    assert "'lots'" in result.stderr
    assert hack_stack(tmp_path, "status").stdout.strip() == "nothing runs"
