"""The host's sysctls that the node changes (``nodeconf.SYSCTLS``): read, write, put back."""

from __future__ import annotations

import contextlib

from liberator_stack import nodeconf as nc
from liberator_stack.process import Say, StackError


def read_sysctls() -> dict[str, str]:
    values = {}
    for key in nc.SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = " ".join(nc.sysctl_path(key).read_text().split())
    return values


def write_sysctl(key: str, value: str) -> None:
    nc.sysctl_path(key).write_text(value + "\n")


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
