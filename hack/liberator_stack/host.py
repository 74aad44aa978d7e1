"""What the node changes on the host, and how ``down`` undoes all of it, even after a crash.

``record()`` writes the sysctls and the folders that exist before anything changes. ``network_up``
creates the node bridge and the firewall chains. ``sweep()`` works from fixed facts
(:mod:`liberator_stack.nodeconf`), not from process ids, so it also cleans after a run that crashed:
it kills every process that names the node's folders and every process in a ``kubepods`` cgroup,
unmounts what lies under those folders, removes the cgroups, links, iptables chains and nftables
tables the node made, and puts each recorded sysctl back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from liberator_stack import nodeconf as nc
from liberator_stack.process import Say, StackError, cache_dir

CGROUP_ROOT = Path("/sys/fs/cgroup")
TABLES = ("filter", "nat", "mangle", "raw")
CHAIN_PREFIXES = ("KUBE-", "CNI-", nc.CHAIN_PREFIX)
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


def _run(argv: list[str], *, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise StackError(
            f"{shlex.join(argv)} failed (exit {result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


# -- privileges -----------------------------------------------------------------------------------


def missing_privileges() -> str | None:
    """One line naming what the node needs and this process lacks, or None."""
    if os.geteuid() != 0:
        return (
            "up cluster needs root (with CAP_SYS_ADMIN and CAP_NET_ADMIN): run it as root, "
            "e.g. sudo hack/stack up cluster"
        )
    caps = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    lacking = [
        name
        for bit, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if not caps >> bit & 1
    ]
    if lacking:
        return (
            f"up cluster needs {' and '.join(lacking)} (mounts, cgroups, network "
            "namespaces): run it as root in a privileged container or VM"
        )
    return None


# -- sysctls and the record -----------------------------------------------------------------------


def read_sysctls() -> dict[str, str]:
    values = {}
    for key in nc.SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = " ".join(nc.sysctl_path(key).read_text().split())
    return values


def write_sysctl(key: str, value: str) -> None:
    nc.sysctl_path(key).write_text(value + "\n")


def _backup_record() -> Path:
    return cache_dir() / "node" / "host-record.json"


def record() -> dict[str, object]:
    """Save the host's state before ``up`` changes it (the sysctls, which folders exist)."""
    state: dict[str, object] = {
        "sysctls": read_sysctls(),
        "foreign_dirs": [str(p) for p in nc.FOREIGN_DIRS if p.exists()],
        "nft_tables": nft_tables(),
    }
    nc.RUN_ROOT.mkdir(parents=True, exist_ok=True)
    nc.HOST_RECORD.write_text(json.dumps(state, indent=2))
    # A second copy survives a lost /run record; both describe this boot's values.
    _backup_record().parent.mkdir(parents=True, exist_ok=True)
    _backup_record().write_text(json.dumps(state, indent=2))
    return state


def _load_record(say: Say) -> dict[str, object]:
    for path in (nc.HOST_RECORD, _backup_record()):
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                if path != nc.HOST_RECORD:
                    say(f"the node's record {nc.HOST_RECORD} is gone; using the copy {path}")
                return loaded
    say("no record of the host before the node started; restoring Linux defaults")
    return {"sysctls": dict(nc.SYSCTL_DEFAULTS), "foreign_dirs": [], "nft_tables": []}


def leftovers() -> list[str]:
    """What a (crashed) node left on the host; empty when the host is clean."""
    found = []
    if nc.HOST_RECORD.exists():
        found.append(str(nc.HOST_RECORD))
    found += [f"process {pid}" for pid in node_pids()]
    found += [f"mount {m}" for m in node_mounts()]
    found += [f"cgroup {c}" for c in kubepods_cgroups()]
    found += [f"link {link}" for link in (nc.NODE_LINK, nc.CNI_BRIDGE) if link_exists(link)]
    found += [f"chain {c}" for c in node_chains()]
    return found


# -- network --------------------------------------------------------------------------------------


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
    for line in _run(["ip", "-4", "route", "show", "table", "all"], check=False).splitlines():
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
        _run(["ip", "link", "add", nc.NODE_LINK, "type", "bridge"])
    _run(["ip", "addr", "replace", f"{nc.NODE_IP}/{nc.NODE_PREFIX}", "dev", nc.NODE_LINK])
    _run(["ip", "link", "set", nc.NODE_LINK, "up"])
    # Host clients of Services (the API server calling a webhook) speak from the node IP, which
    # pods may answer; without the route they would use the uplink's address.
    _run(["ip", "route", "replace", nc.SERVICE_CIDR, "dev", nc.NODE_LINK, "src", nc.NODE_IP])
    # Pod to Service to pod on one bridge is routed and DNATed: it needs both.
    write_sysctl("net.ipv4.ip_forward", "1")
    with contextlib.suppress(OSError):
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    firewall_up()


def firewall_up() -> None:
    """Drop pod packets to anything but the node IP or another pod (first rule, re-run safe).

    Replies within connections the host opened pass: they go back to the host only."""
    for chain, parent in ((nc.FORWARD_CHAIN, "FORWARD"), (nc.INPUT_CHAIN, "INPUT")):
        _run(["iptables", "-t", "filter", "-N", chain], check=False)
        _run(["iptables", "-t", "filter", "-F", chain])
        rules = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-d", nc.POD_CIDR, "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-d", f"{nc.NODE_IP}/32", "-j", "RETURN"],
            ["-s", nc.POD_CIDR, "-j", "DROP"],
        ]
        for rule in rules:
            _run(["iptables", "-t", "filter", "-A", chain, *rule])
        for _ in range(10):
            if not _rule_present(parent, chain):
                break
            _run(["iptables", "-t", "filter", "-D", parent, "-j", chain])
        _run(["iptables", "-t", "filter", "-I", parent, "1", "-j", chain])


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
            out = _run([tool, "-t", table, "-S"], check=False)
            found += [
                f"{tool}/{table}/{line.split()[1]}"
                for line in out.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
    return found


def _remove_chains(say: Say) -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            out = _run([tool, "-t", table, "-S"], check=False)
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
                    _run([tool, "-t", table, "-D", *words[1:]], check=False)
            for chain in ours:
                _run([tool, "-t", table, "-F", chain], check=False)
            for chain in ours:
                _run([tool, "-t", table, "-X", chain], check=False)
            say(f"removed {len(ours)} {tool} chains from table {table}")


def nft_tables() -> list[str]:
    """nftables tables as 'family name' (iptables-nft creates them on first use)."""
    if shutil.which("nft") is None:
        return []
    out = _run(["nft", "list", "tables"], check=False)
    return [
        line.removeprefix("table ").strip()
        for line in out.splitlines()
        if line.startswith("table ")
    ]


def _remove_new_tables(before: list[str], say: Say) -> None:
    """Delete the (now empty) tables that did not exist before ``up``."""
    for table in nft_tables():
        if table not in before:
            family, name = table.split(maxsplit=1)
            listing = _run(["nft", "list", "table", family, name], check=False)
            if re.search(
                r"^\s+(ip|ip6|meta|counter|jump|tcp|udp|ct|mark)\b", listing, re.MULTILINE
            ):
                say(f"leaving nftables table {table}: it holds rules the node did not make")
                continue
            _run(["nft", "delete", "table", family, name], check=False)


# -- processes, mounts, cgroups -------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def node_pids() -> list[int]:
    """Processes whose command line names the node's folders (control plane, kubelet, shims)."""
    marks = (str(nc.VAR_DIR), str(nc.RUN_ROOT))
    me = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in me:
            line = _cmdline(int(entry.name))
            if any(m in line for m in marks):
                found.append(int(entry.name))
    return found


def kubepods_cgroups() -> list[Path]:
    found = []
    if CGROUP_ROOT.exists():
        for hierarchy in CGROUP_ROOT.iterdir():
            found += sorted(hierarchy.glob("kubepods*"))
    return found


def _walk_deepest_first(root: Path) -> Iterator[Path]:
    for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
        yield Path(dirpath)


def _pids_in(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for group in _walk_deepest_first(cgroup):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
    return pids


def _kill(pids: set[int] | list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)}
        time.sleep(0.1)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def node_mounts() -> list[str]:
    prefixes = (f"{nc.VAR_DIR}/", f"{nc.RUN_ROOT}/", "/run/netns/cni-", "/run/containerd/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefixes) or point in (str(nc.VAR_DIR), str(nc.RUN_ROOT)):
            found.append(point)
    return found


def _unmount_all(say: Say) -> None:
    for _ in range(5):
        points = node_mounts()
        if not points:
            return
        for point in sorted(points, key=lambda p: -p.count("/")):
            if _run(["umount", point], check=False) == "" and point in node_mounts():
                _run(["umount", "-l", point], check=False)
    left = node_mounts()
    if left:
        say(f"could not unmount {len(left)} mounts, e.g. {left[0]}")


def _remove_cgroups(say: Say) -> None:
    for _ in range(50):
        groups = kubepods_cgroups()
        if not groups:
            return
        for top in groups:
            _kill(_pids_in(top), signal.SIGKILL)
            for group in _walk_deepest_first(top):
                with contextlib.suppress(OSError):
                    group.rmdir()
        time.sleep(0.1)
    say(f"cgroups left: {', '.join(map(str, kubepods_cgroups()))}")


# -- the sweep ------------------------------------------------------------------------------------


def sweep(say: Say) -> None:
    """Undo everything the node did on the host; safe to run when nothing is left."""
    if not leftovers() and not nc.VAR_DIR.exists() and not nc.RUN_ROOT.exists():
        return
    state = _load_record(say)
    # The kubelet first, so nothing restarts containers; then pods, shims, containerd, the rest.
    pids = node_pids()
    kubelets = [p for p in pids if "kubelet" in _cmdline(p).split(" ", 1)[0]]
    _kill(kubelets, signal.SIGKILL)
    _wait_gone(set(kubelets), 10)
    for top in kubepods_cgroups():
        _kill(_pids_in(top), signal.SIGKILL)
    pids = node_pids()
    _kill(pids, signal.SIGTERM)
    stuck = _wait_gone(set(pids), 10)
    _kill(stuck, signal.SIGKILL)
    _wait_gone(stuck, 5)
    if pids:
        say(f"stopped {len(pids)} node processes")
    _unmount_all(say)
    _remove_cgroups(say)
    for link in (nc.CNI_BRIDGE, nc.NODE_LINK):
        if link_exists(link):
            _run(["ip", "link", "delete", link], check=False)
    _remove_chains(say)
    tables = state.get("nft_tables")
    if isinstance(tables, list):
        _remove_new_tables([str(t) for t in tables], say)
    sysctls = state.get("sysctls")
    if isinstance(sysctls, dict):
        restore_sysctls({str(k): str(v) for k, v in sysctls.items()}, say)
    foreign = state.get("foreign_dirs")
    existed = {str(p) for p in foreign} if isinstance(foreign, list) else set()
    for path in nc.FOREIGN_DIRS:
        if str(path) not in existed and path.exists() and not _has_mounts(path):
            shutil.rmtree(path, ignore_errors=True)
    for path in (nc.VAR_DIR, nc.RUN_ROOT):
        if not _has_mounts(path):
            shutil.rmtree(path, ignore_errors=True)
    left = leftovers()
    if left:
        raise StackError(f"hack/stack down left {len(left)} things: {', '.join(left[:5])}")


def _has_mounts(path: Path) -> bool:
    return any(p == str(path) or p.startswith(f"{path}/") for p in node_mounts())


def restore_sysctls(values: dict[str, str], say: Say) -> None:
    now = read_sysctls()
    changed = [k for k in nc.SYSCTLS if k in values and now.get(k) != values[k]]
    for key in changed:
        with contextlib.suppress(OSError):
            write_sysctl(key, values[key])
    again = read_sysctls()
    wrong = [k for k in changed if again.get(k) != values[k]]
    if changed:
        say(f"restored {len(changed) - len(wrong)} sysctls: {', '.join(changed)}")
    if wrong:
        raise StackError(f"could not restore sysctls {', '.join(wrong)}")
