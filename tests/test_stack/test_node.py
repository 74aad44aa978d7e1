"""``hack/stack up cluster`` / ``down`` on this machine: the Node gets Ready, and ``down`` leaves
the host exactly as it was (mounts, sysctls, iptables, links, cgroups, netns, folders, processes),
also after a crash. Needs root; the cluster tier (tests/test_cluster) needs it too."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from liberator_stack import host
from liberator_stack import nodeconf as nc
from tests.support.commands import hack_stack, run
from tests.test_stack.hostsnap import differences, others_can_enter, snapshot

ROOT = Path(__file__).resolve().parents[2]
NEEDS_ROOT = host.missing_privileges()
pytestmark = pytest.mark.skipif(NEEDS_ROOT is not None, reason=str(NEEDS_ROOT))


def stack(
    run_dir: Path, *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return hack_stack(run_dir, *args, prefix=prefix, env=env, timeout=900)


def kubectl(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["kubectl", f"--kubeconfig={kubeconfig}", *args])


def exports(stdout: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in stdout.splitlines()
        if line.startswith("export ")
    )


@pytest.fixture()
def clean_host() -> dict[str, object]:
    if host.leftovers():
        pytest.skip(f"a node runs already (or a crashed one left {host.leftovers()[:2]})")
    return snapshot()


def run_a_pod(kubeconfig: str) -> None:
    """A pod that really runs: a sandbox, a netns, mounts and cgroups for down to remove."""
    made = kubectl(
        kubeconfig,
        "run",
        "probe",
        "--image=localhost/liberator/pause:1.0",
        "--image-pull-policy=Never",
        "--restart=Never",
    )
    assert made.returncode == 0, made.stderr
    waited = kubectl(kubeconfig, "wait", "--for=condition=Ready", "pod/probe", "--timeout=120s")
    assert waited.returncode == 0, waited.stderr + kubectl(kubeconfig, "get", "events").stdout


def test_up_gets_the_node_ready_and_down_leaves_the_host_as_it_was(
    tmp_path: Path, clean_host: dict[str, object]
) -> None:
    up = stack(tmp_path, "up", "cluster")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        kubeconfig = exports(up.stdout)["KUBECONFIG"]
        nodes = json.loads(kubectl(kubeconfig, "get", "nodes", "-o", "json").stdout)["items"]
        [node] = nodes
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == nc.NODE_IP
        run_a_pod(kubeconfig)
        pod = json.loads(kubectl(kubeconfig, "get", "pod", "probe", "-o", "json").stdout)
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(nc.POD_CIDR)
        status = stack(tmp_path, "status")
        assert "cluster" in status.stdout and "running" in status.stdout
    finally:
        down = stack(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert differences(clean_host, snapshot()) == {}


def test_down_cleans_after_a_crashed_run_without_its_state_file(
    tmp_path: Path, clean_host: dict[str, object]
) -> None:
    up = stack(tmp_path, "up", "cluster")
    assert up.returncode == 0, up.stderr[-3000:]
    run_a_pod(exports(up.stdout)["KUBECONFIG"])
    # The crash: the kubelet, containerd and the control plane die at once; shims and the pod's
    # processes live on, and the state file is lost.
    state = json.loads((tmp_path / "stack.json").read_text())
    for proc in state["cluster"]["procs"]:
        os.kill(proc["pid"], signal.SIGKILL)
    (tmp_path / "stack.json").unlink()
    time.sleep(1)
    assert host.leftovers(), "the crash should have left things behind"
    down = stack(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert differences(clean_host, snapshot()) == {}


@pytest.mark.parametrize("drop", ["root", "CAP_SYS_ADMIN"])
def test_without_privileges_up_cluster_says_what_is_missing_in_one_line(drop: str) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    repo = Path(__file__).resolve().parents[2]
    if drop == "root" and not others_can_enter(repo):
        # The CAP_SYS_ADMIN case still runs: root keeps its access to the folder.
        pytest.skip(f"{repo} lies in a folder other users cannot enter")
    # pytest's tmp_path sits in a folder only root may enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="liberator-noroot-"))
    tmp_path.chmod(0o777)
    prefix = (
        ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        if drop == "root"
        else ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    )
    try:
        result = stack(tmp_path, "up", "cluster", prefix=prefix, env={"HOME": str(tmp_path)})
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert drop in lines[0] and "up cluster" in lines[0]
    assert not host.leftovers()
