"""A real single-node Kubernetes cluster on this machine: ``hack/stack up cluster``.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables mode, for
ClusterIP Services) and a kubelet on containerd + runc with the CNI bridge plugin. The binaries
are built from ``hack/kube`` (:mod:`liberator_stack.kube`), the Debian packages are installed when
missing, and the images come from :mod:`liberator_stack.images`. Addresses, names and folders are
facts of :mod:`liberator_stack.nodeconf`; what changes on the host, and how ``down`` undoes it even
after a crash, is :mod:`liberator_stack.host`.

Settings this machine kind needs (hybrid cgroups, no ``CAP_SYS_RESOURCE``, no registry) are
commented where they are set. Only one node runs per machine: the addresses are fixed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from liberator_stack import host, images, kube
from liberator_stack import nodeconf as nc
from liberator_stack.etcd import start_etcd
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
    spawn,
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
    kube.build_components(say, NODE_COMPONENTS)
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


# -- configuration files --------------------------------------------------------------------------


def containerd_config() -> str:
    return f"""\
version = 2
root = "{nc.CONTAINERD_ROOT}"
state = "{nc.CONTAINERD_STATE}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{nc.CONTAINERD_SOCKET}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{nc.CONTAINERD_ROOT}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # registry.k8s.io cannot be reached: a pause image built here (liberator_stack.images).
  sandbox_image = "{nc.PAUSE_IMAGE}"
  # Root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj fails every sandbox in runc.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{nc.RUNC}"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{nc.CNI_BIN_DIR}"
    conf_dir = "{nc.CNI_CONF_DIR}"
    max_conf_num = 1
"""


def cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": nc.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": nc.CNI_BRIDGE,
                "isGateway": True,
                # No masquerade: pod packets keep their address, and the firewall keeps them here.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(nc.CNI_IPAM_DIR),
                    "ranges": [[{"subnet": nc.POD_CIDR, "gateway": nc.POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def kubelet_config(pki: dict[str, Path], pod_logs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": nc.NODE_IP,
        "port": nc.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(pki["kubelet-serving.crt"]),
        "tlsPrivateKeyFile": str(pki["kubelet-serving.key"]),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki["ca.crt"])},
        },
        "authorization": {"mode": "Webhook"},
        # Hybrid cgroups (v1 hierarchies, cgroup2 at /sys/fs/cgroup/unified); no systemd.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{nc.CONTAINERD_SOCKET}",
        "clusterDomain": nc.CLUSTER_DOMAIN,
        # No cluster DNS and no host resolver inside pods: nothing a pod resolves leaves here.
        "resolvConf": "",
        # A shared machine: evict only when really short, never for image-fs percentages.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "podLogsDir": str(pod_logs),
        "serializeImagePulls": False,
        "maxPods": 110,
        "protectKernelDefaults": False,
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": nc.NODE_NAME,
        "bindAddress": nc.NODE_IP,
        "clusterCIDR": nc.POD_CIDR,
        "healthzBindAddress": f"{nc.NODE_IP}:10256",
        "metricsBindAddress": f"{nc.NODE_IP}:10249",
        "nodePortAddresses": [f"{nc.NODE_IP}/32"],
        # Zeros leave the host's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # No route_localnet: NodePorts on 127.0.0.1 are not needed.
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "detectLocalMode": "ClusterCIDR",
    }


# -- certificates and kubeconfigs -----------------------------------------------------------------


def _pki() -> dict[str, Path]:
    """Every certificate of the node under PKI_DIR; the keys are file names."""
    ca = kube.new_ca("liberator-node-ca")
    out = nc.PKI_DIR
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def keep(stem: str, pair: kube.KeyPair) -> None:
        cert, key = pair.write(out, stem)
        files[f"{stem}.crt"], files[f"{stem}.key"] = cert, key

    keep("ca", ca)
    keep(
        "apiserver",
        kube.issue_cert(
            ca,
            "kube-apiserver",
            hosts=(
                nc.NODE_IP,
                "127.0.0.1",
                nc.KUBERNETES_SERVICE_IP,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{nc.CLUSTER_DOMAIN}",
            ),
        ),
    )
    keep("kubelet-serving", kube.issue_cert(ca, nc.NODE_NAME, hosts=(nc.NODE_IP, nc.NODE_NAME)))
    clients = {
        "admin": ("liberator-admin", ("system:masters",)),
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        "kubelet": (f"system:node:{nc.NODE_NAME}", ("system:nodes",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kube-proxy": ("system:kube-proxy", ()),
    }
    for stem, (name, groups) in clients.items():
        keep(stem, kube.issue_cert(ca, name, organizations=groups, client=True))
    sa = kube.new_ca("service-accounts")  # only its key is used
    sa_key = out / "sa.key"
    sa_key.touch(mode=0o600)
    sa_key.write_bytes(sa.key_pem)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    private = serialization.load_pem_private_key(sa.key_pem, password=None)
    (out / "sa.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    files["sa.key"], files["sa.pub"] = sa_key, out / "sa.pub"
    return files


def write_kubeconfig(path: Path, server: str, pki: dict[str, Path], stem: str) -> Path:
    def data(name: str) -> str:
        return base64.b64encode(pki[name].read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "liberator-node",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate-data": data(f"{stem}.crt"),
                    "client-key-data": data(f"{stem}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "liberator-node",
                "context": {"cluster": "liberator-node", "user": stem, "namespace": "default"},
            }
        ],
        "current-context": "liberator-node",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


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
    version = kube.pinned_version(kube.read_go_mod())
    exes = {name: kube.binary_path(name, version) for name in NODE_COMPONENTS}
    missing = [str(p) for p in exes.values() if not p.exists()]
    missing += [f"{pkg} ({path})" for pkg, path in nc.PACKAGES.items() if not Path(path).exists()]
    pause = images.image_dir() / "pause.tar"
    if not pause.exists():
        missing.append(str(pause))
    if missing:
        raise StackError(f"the node is not built: {', '.join(missing)}; run hack/stack build")
    left = host.leftovers()
    if left or nc.VAR_DIR.exists():
        say(f"cleaning what an earlier node left ({', '.join(left[:3]) or nc.VAR_DIR})")
        host.sweep(say)
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    host.record()
    procs: list[Proc] = []
    try:
        host.network_up()
        for path in (nc.VAR_DIR, nc.RUN_ROOT, nc.CNI_CONF_DIR, nc.CNI_IPAM_DIR):
            path.mkdir(parents=True, exist_ok=True)
        pki = _pki()
        etcd, etcd_url = start_etcd(run_dir, nc.ETCD_DATA)
        procs.append(etcd)
        api_port = free_port()
        server = f"https://{nc.NODE_IP}:{api_port}"
        apiserver = _start_apiserver(run_dir, exes["kube-apiserver"], api_port, etcd_url, pki)
        procs.append(apiserver)
        api = _Api(server, pki)
        wait_until(
            apiserver,
            lambda: (
                api.raw("/readyz").strip() == b"ok" and bool(api.get("/api/v1/namespaces/default"))
            ),
            timeout=kube.START_TIMEOUT,
            what="kube-apiserver",
        )
        say(f"kube-apiserver ready at {server}")
        containerd = _start_containerd(run_dir)
        procs.append(containerd)
        log = run_dir / "images.log"
        images.import_into_node(pause, log)
        kubeconfigs = {
            stem: write_kubeconfig(nc.VAR_DIR / "kubeconfig" / f"{stem}.yaml", server, pki, stem)
            for stem in ("controller-manager", "scheduler", "kubelet", "kube-proxy")
        }
        procs.append(
            _start_controller_manager(
                run_dir, exes["kube-controller-manager"], kubeconfigs["controller-manager"], pki
            )
        )
        procs.append(
            spawn(
                "kube-scheduler",
                [
                    str(exes["kube-scheduler"]),
                    f"--kubeconfig={kubeconfigs['scheduler']}",
                    "--secure-port=0",
                    "--leader-elect=false",
                    "--v=1",
                ],
                run_dir / "kube-scheduler.log",
                env=_go_env("150MiB"),
            )
        )
        kubelet_started = time.monotonic()
        procs.append(_start_kubelet(run_dir, exes["kubelet"], kubeconfigs["kubelet"], pki))
        proxy_config = nc.VAR_DIR / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfigs["kube-proxy"])))
        procs.append(
            spawn(
                "kube-proxy",
                [str(exes["kube-proxy"]), f"--config={proxy_config}", "--v=1"],
                run_dir / "kube-proxy.log",
                env=_go_env("100MiB"),
            )
        )
        for tar in images.node_tarballs():
            if tar != pause:
                images.import_into_node(tar, log)
        _wait_all(procs, lambda: node_ready(api), what=f"Node {nc.NODE_NAME} Ready")
        ready_after = time.monotonic() - kubelet_started
        account = "/api/v1/namespaces/default/serviceaccounts/default"
        _wait_all(procs, lambda: bool(api.get(account)), what="the default ServiceAccount")
        # kube-proxy put its jumps first in FORWARD; ours goes back on top.
        host.firewall_up()
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        host.sweep(say)
        raise
    kubeconfig = write_kubeconfig(run_dir / "kubeconfig", server, pki, "admin")
    say(
        f"Node {nc.NODE_NAME} Ready {ready_after:.1f}s after the kubelet started, "
        f"{time.monotonic() - started:.0f}s in all"
    )
    return Server(
        "cluster",
        procs,
        exports={"KUBECONFIG": str(kubeconfig)},
        details={
            "server": server,
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


def cleanup(say: Say = say_stderr) -> None:
    """After the processes stopped: undo what the node did on the host (idempotent)."""
    if os.geteuid() == 0:
        host.sweep(say)


def _go_env(limit: str) -> dict[str, str]:
    env = dict(os.environ)
    # A soft heap limit: the Go runtime collects harder instead of growing (the machine is shared).
    env.setdefault("GOMEMLIMIT", limit)
    return env


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


def _start_apiserver(
    run_dir: Path, exe: Path, port: int, etcd_url: str, pki: dict[str, Path]
) -> Proc:
    argv = [
        str(exe),
        f"--etcd-servers={etcd_url}",
        f"--secure-port={port}",
        f"--bind-address={nc.NODE_IP}",
        f"--advertise-address={nc.NODE_IP}",
        f"--tls-cert-file={pki['apiserver.crt']}",
        f"--tls-private-key-file={pki['apiserver.key']}",
        f"--client-ca-file={pki['ca.crt']}",
        f"--service-account-issuer=https://kubernetes.default.svc.{nc.CLUSTER_DOMAIN}",
        f"--service-account-key-file={pki['sa.pub']}",
        f"--service-account-signing-key-file={pki['sa.key']}",
        f"--kubelet-client-certificate={pki['apiserver-kubelet-client.crt']}",
        f"--kubelet-client-key={pki['apiserver-kubelet-client.key']}",
        f"--kubelet-certificate-authority={pki['ca.crt']}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--authorization-mode=Node,RBAC",
        # The defaults (ServiceAccount and PodSecurity among them) plus NodeRestriction.
        "--enable-admission-plugins=NodeRestriction",
        f"--service-cluster-ip-range={nc.SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]
    return spawn("kube-apiserver", argv, run_dir / "kube-apiserver.log", env=_go_env("400MiB"))


def _start_containerd(run_dir: Path) -> Proc:
    nc.CONTAINERD_CONFIG.write_text(containerd_config())
    (nc.CNI_CONF_DIR / "10-liberator.conflist").write_text(json.dumps(cni_config(), indent=2))
    proc = spawn(
        "containerd",
        ["containerd", "--config", str(nc.CONTAINERD_CONFIG)],
        run_dir / "containerd.log",
    )

    def answers() -> bool:
        return (
            subprocess.run(
                images.ctr("version"), capture_output=True, timeout=5, check=False
            ).returncode
            == 0
        )

    wait_until(proc, answers, timeout=60, what="containerd")
    return proc


def _start_controller_manager(
    run_dir: Path, exe: Path, kubeconfig: Path, pki: dict[str, Path]
) -> Proc:
    argv = [
        str(exe),
        f"--kubeconfig={kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        f"--service-account-private-key-file={pki['sa.key']}",
        f"--root-ca-file={pki['ca.crt']}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={pki['ca.crt']}",
        f"--cluster-signing-key-file={pki['ca.key']}",
        f"--service-cluster-ip-range={nc.SERVICE_CIDR}",
        "--cluster-name=liberator-node",
        "--v=1",
    ]
    return spawn(
        "kube-controller-manager",
        argv,
        run_dir / "kube-controller-manager.log",
        env=_go_env("200MiB"),
    )


def _start_kubelet(run_dir: Path, exe: Path, kubeconfig: Path, pki: dict[str, Path]) -> Proc:
    pod_logs = run_dir / "pod-logs"
    pod_logs.mkdir(parents=True, exist_ok=True)
    config = nc.VAR_DIR / "kubelet.yaml"
    config.write_text(yaml.safe_dump(kubelet_config(pki, pod_logs)))
    argv = [
        str(exe),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={nc.KUBELET_ROOT}",
        f"--node-ip={nc.NODE_IP}",
        f"--hostname-override={nc.NODE_NAME}",
        "--v=1",
    ]
    return spawn("kubelet", argv, run_dir / "kubelet.log", env=_go_env("200MiB"))
