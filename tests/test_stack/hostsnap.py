"""What the node may change on the host, to compare before ``up`` and after ``down``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from liberator_stack import host
from liberator_stack import nodeconf as nc

# Kernel counters and per-boot values that move by themselves.
VOLATILE = re.compile(
    r"^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\.)|kernel\.random\.|"
    r"kernel\.ns_last_pid|kernel\.pty\.nr|net\.netfilter\.nf_conntrack_count|"
    r"kernel\.sched_|vm\.stat_|fs\.aio-nr|kernel\.keys\.(maxkeys|maxbytes)$)"
)


def _out(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout


def _rules(text: str) -> list[str]:
    # Comments carry timestamps; counters move.
    return [
        re.sub(r"\[\d+:\d+\]", "", line)
        for line in text.splitlines()
        if line and not line.startswith("#")
    ]


def sysctls() -> dict[str, str]:
    values = {}
    for line in _out(["sysctl", "-a"]).splitlines():
        key, sep, value = line.partition(" = ")
        if sep and not VOLATILE.match(key):
            values[key] = value
    return values


def snapshot() -> dict[str, Any]:
    mounts = sorted(
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    return {
        "mounts": mounts,
        "sysctls": sysctls(),
        "iptables": _rules(_out(["iptables-save"])),
        "ip6tables": _rules(_out(["ip6tables-save"])),
        "nft tables": host.nft_tables(),
        "links": sorted(p.name for p in Path("/sys/class/net").iterdir()),
        "addresses": sorted(
            re.sub(r"\s+valid_lft.*", "", line) for line in _out(["ip", "-o", "addr"]).splitlines()
        ),
        "kubepods cgroups": [str(p) for p in host.kubepods_cgroups()],
        "netns": sorted(p.name for p in Path("/run/netns").glob("*")),
        "folders": [str(p) for p in (*nc.FOREIGN_DIRS, nc.VAR_DIR, nc.RUN_ROOT) if p.exists()],
        "node processes": host.node_pids(),
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per aspect, what ``after`` has that ``before`` had not, and the reverse."""
    found: dict[str, Any] = {}
    for key, old in before.items():
        new = after[key]
        if isinstance(old, dict):
            changed = {
                k: (old.get(k), new.get(k))
                for k in old.keys() | new.keys()
                if old.get(k) != new.get(k)
            }
            if changed:
                found[key] = changed
        elif old != new:
            found[key] = {
                "added": sorted(set(map(str, new)) - set(map(str, old))),
                "gone": sorted(set(map(str, old)) - set(map(str, new))),
            }
    return found


def others_can_enter(path: Path) -> bool:
    """Whether a user other than the owner can reach ``path`` (a clone under a 0700 folder, such
    as ``mktemp -d``, cannot be run by an unprivileged user at all)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))
