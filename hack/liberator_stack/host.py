"""What the node changes on the host, and how ``down`` undoes all of it, even after a crash.

``record()`` writes the sysctls and the folders that exist before anything changes.
:func:`liberator_stack.hostnet.network_up` creates the node bridge and the firewall chains.
``sweep()`` works from fixed facts (:mod:`liberator_stack.nodeconf`), not from process ids, so it
also cleans after a run that crashed: it kills every process that names the node's folders and
every process in a ``kubepods`` cgroup, unmounts what lies under those folders, removes the
cgroups, links, iptables chains and nftables tables the node made (:mod:`liberator_stack.hostnet`),
and puts each recorded sysctl back (:mod:`liberator_stack.sysctls`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from liberator_stack import hostnet
from liberator_stack import nodeconf as nc
from liberator_stack.hostnet import link_exists, nft_tables, node_chains
from liberator_stack.process import Say, StackError, cache_dir, run_output
from liberator_stack.sysctls import read_sysctls, restore_sysctls

CGROUP_ROOT = Path("/sys/fs/cgroup")
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


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


# -- the record -----------------------------------------------------------------------------------


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
            if run_output(["umount", point], check=False) == "" and point in node_mounts():
                run_output(["umount", "-l", point], check=False)
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
    hostnet.remove_links()
    hostnet.remove_chains(say)
    tables = state.get("nft_tables")
    if isinstance(tables, list):
        hostnet.remove_new_tables([str(t) for t in tables], say)
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
