"""``make demo`` on the local node, non-interactive, and its refusals.

The demo brings up its own node and servers, installs Liberator in the cluster, runs the
quotes-service pods (examples/quotes_app.py) with the injected sidecar, fails the leading pod over,
seeds through a real Job, and exits 0 only when every expected event reached the event store. The
end-to-end run needs root (the node); the refusals and the app's configuration need nothing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from liberator_stack import host
from tests.support.commands import run
from tests.test_stack.hostsnap import others_can_enter

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(ROOT / "hack" / "demo.py")]


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


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DEMO_NONINTERACTIVE": "1",
        "LIBERATOR_STACK_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT / "hack"),
        **extra,
    }
    env.pop("KUBECONFIG", None)
    return env


def run_demo(tmp_path: Path) -> str:
    """Run the demo non-interactively with 5 quotes; its output, after asserting exit 0."""
    result = run(DEMO, env=demo_env(tmp_path, DEMO_QUOTES="5"), timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return output


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_node(tmp_path: Path) -> None:
    problem = host.missing_privileges()
    if problem:
        pytest.skip(f"make demo runs the local node: {problem}")
    if host.leftovers():
        pytest.skip("a local node runs already (hack/stack down first)")
    output = run_demo(tmp_path)
    for step in range(1, 9):
        assert f"[{step}/9]" in output
    assert "[9/9]" not in output  # non-interactive: no hold
    # Two app pods, each 2/2 Ready (app + native sidecar), one sidecar leads.
    pods = re.findall(r"^\s+(quotes-service-\S+)\s+2/2\s+Running", output, re.MULTILINE)
    assert len(set(pods)) >= 2, output[-8000:]
    assert "as a native sidecar" in output
    assert "one sidecar leads: quotes-service-" in output
    # The demo's own events (5 created, 2 updated, 1 purchased, 1 deleted) and the app's.
    assert "all 9 of the demo's events stored" in output
    assert "quote.purchased" in output
    assert re.search(r"quote\.created\s+quotes-service-\S+-001", output), output[-8000:]
    # The takeover: the lead moves to the other pod, and every insert has its event.
    moved = re.search(r"the lead moved from (\S+) to (\S+) ", output)
    assert moved and moved[1] != moved[2], output[-8000:]
    assert re.search(
        r"(\d+) quotes inserted so far .*: \1 distinct quote\.created events in the "
        r"event store, none lost",
        output,
    ), output[-8000:]
    # The seed ran as a Job that the Job controller completed.
    assert re.search(
        r"EventSeed quotes-initial: phase=Succeeded seeded=\d+, from Job \S+: "
        r"Complete",
        output,
    ), output[-8000:]
    assert "quotes that existed seeded" in output
    # kubectl get entitypublishers,eventseeds -A names both kinds; hack/stack status the pods.
    assert "entitypublisher.liberator.io/quotes" in output
    assert "eventseed.liberator.io/quotes-initial" in output
    # The conditions behind STATUS: the leader moves, and its resume points have headroom.
    assert re.search(r"Stalled\s+False\s+Moving", output), output[-8000:]
    assert re.search(r"ResumePointAtRisk\s+False\s+HeadroomOK", output), output[-8000:]
    assert re.search(r"cluster\s+running", output)
    assert "pod quotes/quotes-service-" in output
    assert "local process" not in output
    assert re.search(r"\[demo\] total \d+s", output)
    # Everything stopped: the node is down.
    assert host.leftovers() == []
    assert processes_mentioning(str(tmp_path)) == []

    # A second run in the same place starts from empty servers: the stand-in kept the first
    # run's quotes in its file, and the demo writes the same ids again.
    output = run_demo(tmp_path)
    assert "an earlier run's data and logs in" in output
    assert "all 9 of the demo's events stored" in output
    assert host.leftovers() == []


def test_demo_refuses_a_bad_quote_count(tmp_path: Path) -> None:
    result = run(DEMO, env=demo_env(tmp_path, DEMO_QUOTES="many"), timeout=60)
    assert result.returncode == 2
    assert "DEMO_QUOTES='many' is not a number: set it to a whole number" in result.stderr
    assert processes_mentioning(str(tmp_path)) == []


def _refusal(argv: list[str], tmp_path: Path) -> str:
    """Run the demo as ``argv``; it must fail at once with exit 1 and one line, the returned."""
    tmp_path.chmod(0o777)
    result = run(argv, env=demo_env(tmp_path), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert processes_mentioning(str(tmp_path)) == []
    return line


def test_demo_without_root_fails_at_once_with_one_line(tmp_path: Path) -> None:
    argv = DEMO
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is missing: cannot drop root")
        if not others_can_enter(ROOT):
            # A clone under a 0700 folder (mktemp -d): no other user can even start the
            # interpreter. The capability test below covers the refusal there.
            pytest.skip(f"{ROOT} lies in a folder other users cannot enter")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *DEMO]
    line = _refusal(argv, tmp_path)
    assert line.startswith("make demo runs a Kubernetes node here and needs root"), line
    assert "sudo make demo" in line


def test_demo_without_the_node_capabilities_fails_at_once_naming_them(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop capabilities")
    line = _refusal(
        [setpriv, "--bounding-set=-sys_admin,-net_admin", "--inh-caps=-all", *DEMO], tmp_path
    )
    assert line.startswith(
        "make demo runs a Kubernetes node here and needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
    ), line


# -- the app the demo's quotes-service pods run --


def quotes_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quotes_app", ROOT / "examples" / "quotes_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quotes_app"] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


GOOD = {"MONGO_URI": "mongodb://198.51.100.1:27017/", "POD_NAME": "quotes-service-abc"}


def test_the_app_reads_its_defaults() -> None:
    config = quotes_app().load_config(GOOD)
    assert (config.database, config.interval, config.max_quotes) == ("quotes", 3.0, 20)
    assert quotes_app().quote(config, 7)["_id"] == "quotes-service-abc-007"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POD_NAME": "p"}, "MONGO_URI is not set: give the app's Deployment an env entry"),
        ({"MONGO_URI": "mongodb://h/"}, "POD_NAME is not set"),
        (
            {**GOOD, "MONGO_URI": "http://h/"},
            "MONGO_URI='http://h/' is not a MongoDB URI: it starts with mongodb://",
        ),
        (
            {**GOOD, "QUOTES_INTERVAL_SECONDS": "fast"},
            "QUOTES_INTERVAL_SECONDS='fast' is not a number: set it between 0.1 and 3600",
        ),
        ({**GOOD, "QUOTES_INTERVAL_SECONDS": "0"}, "QUOTES_INTERVAL_SECONDS='0' is out of range"),
        (
            {**GOOD, "QUOTES_MAX": "2.5"},
            "QUOTES_MAX='2.5' is not an integer: set it between 0 and 10000, or unset it for 20",
        ),
        ({**GOOD, "QUOTES_MAX": "-1"}, "QUOTES_MAX='-1' is out of range"),
    ],
)
def test_the_app_refuses_bad_configuration(env: dict[str, str], message: str) -> None:
    app = quotes_app()
    with pytest.raises(app.ConfigError, match=re.escape(message)):
        app.load_config(env)


def test_the_app_exits_2_with_one_line_naming_the_variable() -> None:
    result = run(
        [sys.executable, str(ROOT / "examples" / "quotes_app.py")],
        env={
            "PATH": os.environ["PATH"],
            "POD_NAME": "p",
            "MONGO_URI": "mongodb://h/",
            "QUOTES_MAX": "lots",
        },
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("quotes_app: QUOTES_MAX='lots' is not an integer")
