"""The node's components: each one's configuration and command line, and how it is started.

containerd (with the CNI bridge), kube-apiserver, kube-controller-manager, kube-scheduler, the
kubelet and kube-proxy. Settings this machine kind needs (hybrid cgroups, no
``CAP_SYS_RESOURCE``, no registry) are commented where they are set; the facts they use
(addresses, names, folders) are :mod:`liberator_stack.nodeconf`'s. Each Go component gets a soft
heap limit (``GOMEMLIMIT``): the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from liberator_stack import images
from liberator_stack import nodeconf as nc
from liberator_stack.process import Proc, spawn, wait_until

__all__ = [
    "cni_config",
    "containerd_config",
    "kube_proxy_config",
    "kubelet_config",
    "start_apiserver",
    "start_containerd",
    "start_controller_manager",
    "start_kube_proxy",
    "start_kubelet",
    "start_scheduler",
]


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


# -- starting them --------------------------------------------------------------------------------


def go_env(limit: str) -> dict[str, str]:
    env = dict(os.environ)
    # A soft heap limit: the Go runtime collects harder instead of growing (the machine is shared).
    env.setdefault("GOMEMLIMIT", limit)
    return env


def start_apiserver(
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
    return spawn("kube-apiserver", argv, run_dir / "kube-apiserver.log", env=go_env("400MiB"))


def start_containerd(run_dir: Path) -> Proc:
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


def start_controller_manager(
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
        env=go_env("200MiB"),
    )


def start_kubelet(run_dir: Path, exe: Path, kubeconfig: Path, pki: dict[str, Path]) -> Proc:
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
    return spawn("kubelet", argv, run_dir / "kubelet.log", env=go_env("200MiB"))


def start_scheduler(run_dir: Path, exe: Path, kubeconfig: Path) -> Proc:
    argv = [
        str(exe),
        f"--kubeconfig={kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        "--v=1",
    ]
    return spawn("kube-scheduler", argv, run_dir / "kube-scheduler.log", env=go_env("150MiB"))


def start_kube_proxy(run_dir: Path, exe: Path, kubeconfig: Path) -> Proc:
    config = nc.VAR_DIR / "kube-proxy.yaml"
    config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig)))
    argv = [str(exe), f"--config={config}", "--v=1"]
    return spawn("kube-proxy", argv, run_dir / "kube-proxy.log", env=go_env("100MiB"))
