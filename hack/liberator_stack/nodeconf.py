"""Facts about the local single-node cluster, each in one place: addresses, names, paths, packages.

Addresses come from ranges reserved for documentation (RFC 5737) and benchmarking (RFC 2544), so
no real network should use them: the node is 198.51.100.1 on a bridge the stack creates, pods
get 198.18.0.0/24 and Services 198.18.128.0/24. Not 192.0.2.0/24: machines of this kind use it
for their own uplink (eth0 192.0.2.2, gateway 192.0.2.1). ``up`` refuses to start when any of
these ranges overlaps an address or route the machine already has. Nothing is masqueraded, and
a firewall chain drops pod packets addressed to anything but the node or another pod
(:mod:`liberator_stack.host`).

Everything the node writes outside the stack's run folder lives under :data:`VAR_DIR` and
:data:`RUN_ROOT`, fixed paths, so ``hack/stack down`` finds the leftovers of a crashed run
without a state file.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from liberator_stack.process import StackError

NODE_NAME = "liberator-node"
NODE_LINK = "liberator0"
"""A bridge with no ports that carries the node IP (the node IP cannot be loopback)."""
NODE_IP = "198.51.100.1"
NODE_PREFIX = 24
POD_CIDR = "198.18.0.0/24"
POD_GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.18.128.0/24"
KUBERNETES_SERVICE_IP = "198.18.128.1"
CNI_BRIDGE = "liberator-cni0"
CNI_NETWORK = "liberator"
CHAIN_PREFIX = "LIBERATOR-"
FORWARD_CHAIN = "LIBERATOR-FORWARD"
INPUT_CHAIN = "LIBERATOR-INPUT"
KUBELET_PORT = 10250
CLUSTER_DOMAIN = "cluster.local"

VAR_DIR = Path("/var/lib/liberator-node")
RUN_ROOT = Path("/run/liberator-node")
HOST_RECORD = RUN_ROOT / "host.json"
"""What ``up`` changed on the host (sysctls before, folders it created); ``down`` undoes it."""
ETCD_DATA = VAR_DIR / "etcd"
PKI_DIR = VAR_DIR / "pki"
KUBELET_ROOT = VAR_DIR / "kubelet"
CONTAINERD_ROOT = VAR_DIR / "containerd"
CONTAINERD_STATE = RUN_ROOT / "containerd"
CONTAINERD_SOCKET = RUN_ROOT / "containerd.sock"
CONTAINERD_CONFIG = VAR_DIR / "containerd.toml"
CNI_CONF_DIR = VAR_DIR / "cni" / "net.d"
CNI_IPAM_DIR = VAR_DIR / "cni" / "networks"
CNI_BIN_DIR = Path("/usr/lib/cni")
# Paths that programs use whatever they are told; created by the node, removed by down.
FOREIGN_DIRS = (
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/var/log/containers"),
    Path("/run/netns"),
)

# Debian 12 packages the node needs, each with a file that shows it is installed.
PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "nftables": "/usr/sbin/nft",
    "buildah": "/usr/bin/buildah",
    "debootstrap": "/usr/sbin/debootstrap",
}
RUNC = "/usr/sbin/runc"

PAUSE_IMAGE = "localhost/liberator/pause:1.0"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
DEBIAN_SUITE = "bookworm"

# Host settings the kubelet (kernel tunables), kube-proxy, the bridge plugin and we change.
# Recorded before ``up``, restored by ``down``; ip_forward first, as it resets per-link values.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Linux defaults, used by ``down`` when the record of a crashed run is gone.
SYSCTL_DEFAULTS = {
    "net.ipv4.ip_forward": "0",
    "vm.overcommit_memory": "0",
    "vm.panic_on_oom": "0",
    "kernel.panic": "0",
    "kernel.panic_on_oops": "0",
}


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def listen_host(host: str | None = None) -> str:
    """Where a host server listens: ``host`` (the node IP when a Stack runs the node: pods reach
    the servers there, and so do host clients), else ``LIBERATOR_LISTEN_HOST`` (an address pods of
    another cluster reach this machine at, e.g. kind's bridge gateway), else loopback. Never
    guessed from the machine's links: another session's servers must not follow this node."""
    chosen = (host or os.environ.get("LIBERATOR_LISTEN_HOST", "")).strip()
    if not chosen:
        return "127.0.0.1"
    try:
        ipaddress.ip_address(chosen)
    except ValueError:
        raise StackError(
            f"LIBERATOR_LISTEN_HOST={chosen!r} is not an IP address: give one of "
            "this machine's addresses that pods can reach"
        ) from None
    return chosen
