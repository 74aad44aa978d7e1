"""A real single-node Kubernetes cluster on this machine: ``hack/stack up cluster``.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables mode, for
ClusterIP Services) and a kubelet on containerd + runc with the CNI bridge plugin. The binaries
are built from ``hack/kube`` (:mod:`liberator_stack.kubebuild`), the Debian packages are installed
when missing, and the images come from :mod:`liberator_stack.images`. How each component is
configured and started is in :mod:`liberator_stack.components`, the certificates and kubeconfigs
in :mod:`liberator_stack.nodepki`. Addresses, names and folders are facts of
:mod:`liberator_stack.nodeconf`; what changes on the host, and how ``down`` undoes it even after a
crash, is :mod:`liberator_stack.host` (the network: :mod:`liberator_stack.hostnet`).

Settings this machine kind needs (hybrid cgroups, no ``CAP_SYS_RESOURCE``, no registry) are
commented where they are set. Only one node runs per machine: the addresses are fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

from liberator_stack import components, host, hostnet, images, kube, kubebuild
from liberator_stack import nodeconf as nc
from liberator_stack.etcd import start_etcd
from liberator_stack.nodepki import node_pki, write_kubeconfig
from liberator_stack.process import (
    Proc,
    Say,
    Server,
    StackError,
    cache_dir,
    free_port,
    log_tail,
    run_checked,
    say_stderr,
    wait_until,
)

__all__ = ["build", "cleanup", "start"]

NODE_COMPONENTS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
)
READY_TIMEOUT = 180.0


# -- build ----------------------------------------------------------------------------------------


def build(say: Say) -> None:
    """Install the node's Debian packages, build the Kubernetes binaries and the pause image."""
    problem = host.missing_privileges()
    if problem:
        raise StackError(problem)
    install_packages(say)
    kube.build(say)
    kubebuild.build_components(say, NODE_COMPONENTS)
    images.build_pause(say)


def install_packages(say: Say) -> None:
    missing = [pkg for pkg, path in nc.PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise StackError(
            f"missing {', '.join(missing)} and apt-get is not available: install "
            "them (Debian 12 names)"
        )
    if os.geteuid() != 0:
        raise StackError(
            f"missing Debian packages {', '.join(missing)}: install them as root "
            f"(apt-get install {' '.join(missing)})"
        )
    say(f"installing {', '.join(missing)} with apt-get (about 1 minute)")
    log = cache_dir() / "logs" / "apt-node.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked(["apt-get", "update", "-qq"], log=log, what="apt-get update", env=env)
    # No recommends: buildah recommends crun, which fails on hybrid cgroups.
    run_checked(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        log=log,
        what=f"apt-get install {' '.join(missing)}",
        env=env,
    )


def build_image(say: Say) -> None:
    """``make image``: the Dockerfile built with buildah, loaded into the node if it runs."""
    problem = host.missing_privileges()
    if problem:
        raise StackError(problem.replace("up cluster", "make image"))
    install_packages(say)
    tar = images.build_project(say)
    if nc.CONTAINERD_SOCKET.exists():
        images.import_into_node(tar, cache_dir() / "logs" / "image-liberator.log")
        say(f"loaded {images.project_image()} into the node")


# -- talking to the API server --------------------------------------------------------------------


class _Api:
    def __init__(self, server: str, pki: dict[str, Path]) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        self.context.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))

    def raw(self, path: str) -> bytes:
        with urllib.request.urlopen(
            f"{self.server}{path}", timeout=5, context=self.context
        ) as response:
            return bytes(response.read())

    def get(self, path: str) -> Any:
        return json.loads(self.raw(path))


def node_ready(api: _Api) -> bool:
    node = api.get(f"/api/v1/nodes/{nc.NODE_NAME}")
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


# -- start and stop -------------------------------------------------------------------------------


def start(run_dir: Path, port: int | None = None, say: Say = say_stderr) -> Server:
    """Start the node from a clean host state and wait until the Node is Ready."""
    problem = host.missing_privileges()
    if problem:
        raise StackError(problem)
    if port is not None:
        raise StackError("the cluster does not restart in place: hack/stack down, then up cluster")
    version = kubebuild.pinned_version(kubebuild.read_go_mod())
    exes = _built(version)
    left = host.leftovers()
    if left or nc.VAR_DIR.exists():
        say(f"cleaning what an earlier node left ({', '.join(left[:3]) or nc.VAR_DIR})")
        host.sweep(say)
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    host.record()
    # Each process goes in as it starts: a failure at any step stops all that run, then sweeps.
    procs: list[Proc] = []
    try:
        api, pki, etcd_url = _control_plane(run_dir, exes, procs, say)
        ready_after = _workers(run_dir, exes, api, pki, procs)
        account = "/api/v1/namespaces/default/serviceaccounts/default"
        _wait_all(procs, lambda: bool(api.get(account)), what="the default ServiceAccount")
        # kube-proxy put its jumps first in FORWARD; ours goes back on top.
        hostnet.firewall_up()
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        host.sweep(say)
        raise
    kubeconfig = write_kubeconfig(run_dir / "kubeconfig", api.server, pki, "admin")
    say(
        f"Node {nc.NODE_NAME} Ready {ready_after:.1f}s after the kubelet started, "
        f"{time.monotonic() - started:.0f}s in all"
    )
    return Server(
        "cluster",
        procs,
        exports={"KUBECONFIG": str(kubeconfig)},
        details={
            "server": api.server,
            "version": version,
            "node": nc.NODE_NAME,
            "node_ip": nc.NODE_IP,
            "pods": nc.POD_CIDR,
            "services": nc.SERVICE_CIDR,
            "kubeconfig": str(kubeconfig),
            "etcd": etcd_url,
            "ready_seconds": f"{ready_after:.1f}",
        },
        run_dir=run_dir,
    )


def _pause_tar() -> Path:
    return images.image_dir() / "pause.tar"


def _built(version: str) -> dict[str, Path]:
    """Each component's binary; raises naming whatever of the node is not built or installed."""
    exes = {name: kubebuild.binary_path(name, version) for name in NODE_COMPONENTS}
    missing = [str(p) for p in exes.values() if not p.exists()]
    missing += [f"{pkg} ({path})" for pkg, path in nc.PACKAGES.items() if not Path(path).exists()]
    pause = _pause_tar()
    if not pause.exists():
        missing.append(str(pause))
    if missing:
        raise StackError(f"the node is not built: {', '.join(missing)}; run hack/stack build")
    return exes


def _control_plane(
    run_dir: Path, exes: dict[str, Path], procs: list[Proc], say: Say
) -> tuple[_Api, dict[str, Path], str]:
    """The network, the certificates, etcd and a ready kube-apiserver: its client, the
    certificates and etcd's URL. Started processes go into ``procs``."""
    hostnet.network_up()
    for path in (nc.VAR_DIR, nc.RUN_ROOT, nc.CNI_CONF_DIR, nc.CNI_IPAM_DIR):
        path.mkdir(parents=True, exist_ok=True)
    pki = node_pki()
    etcd, etcd_url = start_etcd(run_dir, nc.ETCD_DATA)
    procs.append(etcd)
    api_port = free_port()
    server = f"https://{nc.NODE_IP}:{api_port}"
    apiserver = components.start_apiserver(run_dir, exes["kube-apiserver"], api_port, etcd_url, pki)
    procs.append(apiserver)
    api = _Api(server, pki)
    wait_until(
        apiserver,
        lambda: api.raw("/readyz").strip() == b"ok" and bool(api.get("/api/v1/namespaces/default")),
        timeout=kube.START_TIMEOUT,
        what="kube-apiserver",
    )
    say(f"kube-apiserver ready at {server}")
    return api, pki, etcd_url


def _workers(
    run_dir: Path, exes: dict[str, Path], api: _Api, pki: dict[str, Path], procs: list[Proc]
) -> float:
    """containerd with the images, the controller manager, the scheduler, the kubelet and
    kube-proxy, until the Node is Ready; the seconds from the kubelet's start to Ready.
    Started processes go into ``procs``."""
    procs.append(components.start_containerd(run_dir))
    log = run_dir / "images.log"
    pause = _pause_tar()
    images.import_into_node(pause, log)
    kubeconfigs = {
        stem: write_kubeconfig(nc.VAR_DIR / "kubeconfig" / f"{stem}.yaml", api.server, pki, stem)
        for stem in ("controller-manager", "scheduler", "kubelet", "kube-proxy")
    }
    procs.append(
        components.start_controller_manager(
            run_dir, exes["kube-controller-manager"], kubeconfigs["controller-manager"], pki
        )
    )
    procs.append(
        components.start_scheduler(run_dir, exes["kube-scheduler"], kubeconfigs["scheduler"])
    )
    kubelet_started = time.monotonic()
    procs.append(components.start_kubelet(run_dir, exes["kubelet"], kubeconfigs["kubelet"], pki))
    procs.append(
        components.start_kube_proxy(run_dir, exes["kube-proxy"], kubeconfigs["kube-proxy"])
    )
    for tar in images.node_tarballs():
        if tar != pause:
            images.import_into_node(tar, log)
    _wait_all(procs, lambda: node_ready(api), what=f"Node {nc.NODE_NAME} Ready")
    return time.monotonic() - kubelet_started


def cleanup(say: Say = say_stderr) -> None:
    """After the processes stopped: undo what the node did on the host (idempotent)."""
    if os.geteuid() == 0:
        host.sweep(say)


def _wait_all(procs: list[Proc], ready: Any, *, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise StackError(
                    f"{proc.name} exited while waiting for {what}; log {proc.log}:\n"
                    f"{log_tail(proc.log)}"
                )
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{log_tail(p.log, 8)}" for p in procs[-3:])
    raise StackError(f"{what} not reached after {READY_TIMEOUT:.0f}s:\n{tails}")
