"""The node's network on the host: the node bridge and its routes, the firewall chains, and the
iptables chains and nftables tables the node (kube-proxy, CNI) made, found and removed by name.

Chains are the node's when their names start with ``KUBE-``, ``CNI-`` or ``LIBERATOR-``; an
nftables table is removed only when it did not exist before ``up`` and holds no rules of others.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from liberator_stack import nodeconf as nc
from liberator_stack.process import Say, StackError, run_output
from liberator_stack.sysctls import write_sysctl

TABLES = ("filter", "nat", "mangle", "raw")
CHAIN_PREFIXES = ("KUBE-", "CNI-", nc.CHAIN_PREFIX)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def address_conflicts() -> list[str]:
    """Routes or addresses of this machine (not the node's) that overlap the node's ranges."""
    ours = {nc.NODE_LINK, nc.CNI_BRIDGE}
    ranges = [
        ipaddress.ip_network(r, strict=False)
        for r in (f"{nc.NODE_IP}/{nc.NODE_PREFIX}", nc.POD_CIDR, nc.SERVICE_CIDR)
    ]
    found = []
    for line in run_output(["ip", "-4", "route", "show", "table", "all"], check=False).splitlines():
        words = line.split()
        if not words:
            continue
        dev = words[words.index("dev") + 1] if "dev" in words else ""
        dest = words[1] if words[0] in ("local", "broadcast", "unicast") else words[0]
        if dev in ours or dest == "default":
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dest, strict=False)
            found += [f"{line.strip()} (overlaps {r})" for r in ranges if net.overlaps(r)]
        if "via" in words:
            via = ipaddress.ip_address(words[words.index("via") + 1])
            found += [f"{line.strip()} (gateway in {r})" for r in ranges if via in r]
    return found


def network_up() -> None:
    """The node bridge with the node IP, forwarding for pods, and the firewall chains."""
    conflicts = address_conflicts()
    if conflicts:
        raise StackError(
            f"the node's addresses clash with this machine's network: "
            f"{conflicts[0]}; change them in hack/liberator_stack/nodeconf.py"
        )
    if not link_exists(nc.NODE_LINK):
        run_output(["ip", "link", "add", nc.NODE_LINK, "type", "bridge"])
    run_output(["ip", "addr", "replace", f"{nc.NODE_IP}/{nc.NODE_PREFIX}", "dev", nc.NODE_LINK])
    run_output(["ip", "link", "set", nc.NODE_LINK, "up"])
    # Host clients of Services (the API server calling a webhook) speak from the node IP, which
    # pods may answer; without the route they would use the uplink's address.
    run_output(["ip", "route", "replace", nc.SERVICE_CIDR, "dev", nc.NODE_LINK, "src", nc.NODE_IP])
    # Pod to Service to pod on one bridge is routed and DNATed: it needs both.
    write_sysctl("net.ipv4.ip_forward", "1")
    with contextlib.suppress(OSError):
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    firewall_up()


def firewall_up() -> None:
    """Drop pod packets to anything but the node IP or another pod (first rule, re-run safe).

    Replies within connections the host opened pass: they go back to the host only."""
    for chain, parent in ((nc.FORWARD_CHAIN, "FORWARD"), (nc.INPUT_CHAIN, "INPUT")):
        run_output(["iptables", "-t", "filter", "-N", chain], check=False)
        run_output(["iptables", "-t", "filter", "-F", chain])
        rules = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-d", nc.POD_CIDR, "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-d", f"{nc.NODE_IP}/32", "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-j", "DROP"],
        ]
        for rule in rules:
            run_output(["iptables", "-t", "filter", "-A", chain, *rule])
        for _ in range(10):
            if not _rule_present(parent, chain):
                break
            run_output(["iptables", "-t", "filter", "-D", parent, "-j", chain])
        run_output(["iptables", "-t", "filter", "-I", parent, "1", "-j", chain])


def _rule_present(parent: str, chain: str) -> bool:
    return (
        subprocess.run(
            ["iptables", "-t", "filter", "-C", parent, "-j", chain],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def node_chains() -> list[str]:
    found = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            out = run_output([tool, "-t", table, "-S"], check=False)
            found += [
                f"{tool}/{table}/{line.split()[1]}"
                for line in out.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
    return found


def remove_chains(say: Say) -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            out = run_output([tool, "-t", table, "-S"], check=False)
            lines = out.splitlines()
            ours = [
                ln.split()[1]
                for ln in lines
                if ln.startswith("-N ") and ln.split()[1].startswith(CHAIN_PREFIXES)
            ]
            if not ours:
                continue
            # Jumps from built-in chains first, then our chains' own rules, then the chains.
            for line in lines:
                words = shlex.split(line)
                if (
                    words[:1] == ["-A"]
                    and not words[1].startswith(CHAIN_PREFIXES)
                    and any(w.startswith(CHAIN_PREFIXES) for w in words[2:])
                ):
                    run_output([tool, "-t", table, "-D", *words[1:]], check=False)
            for chain in ours:
                run_output([tool, "-t", table, "-F", chain], check=False)
            for chain in ours:
                run_output([tool, "-t", table, "-X", chain], check=False)
            say(f"removed {len(ours)} {tool} chains from table {table}")


def nft_tables() -> list[str]:
    """nftables tables as 'family name' (iptables-nft creates them on first use)."""
    if shutil.which("nft") is None:
        return []
    out = run_output(["nft", "list", "tables"], check=False)
    return [
        line.removeprefix("table ").strip()
        for line in out.splitlines()
        if line.startswith("table ")
    ]


def remove_new_tables(before: list[str], say: Say) -> None:
    """Delete the (now empty) tables that did not exist before ``up``."""
    for table in nft_tables():
        if table not in before:
            family, name = table.split(maxsplit=1)
            listing = run_output(["nft", "list", "table", family, name], check=False)
            if re.search(
                r"^\s+(ip|ip6|meta|counter|jump|tcp|udp|ct|mark)\b", listing, re.MULTILINE
            ):
                say(f"leaving nftables table {table}: it holds rules the node did not make")
                continue
            run_output(["nft", "delete", "table", family, name], check=False)


def remove_links() -> None:
    """The CNI bridge, then the node bridge (with its address and routes)."""
    for link in (nc.CNI_BRIDGE, nc.NODE_LINK):
        if link_exists(link):
            run_output(["ip", "link", "delete", link], check=False)
