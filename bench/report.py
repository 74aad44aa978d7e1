"""What ``python -m bench`` prints: the table of rows, and the machine the run was on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "machine", "table", "verdict"]


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    metric: str
    """What was measured."""
    value: str
    """The figure with its unit."""
    target: str
    """The target of docs/targets.md, or ``-`` for a baseline."""
    ratio: str
    """Figure over target (or over its bound), where that means something."""
    verdict: str
    """``met``, ``MISSED`` or ``info``."""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def table(rows: list[Row]) -> str:
    head = Row("metric", "value", "target", "ratio", "verdict")
    cols = list(
        zip(
            *[(r.metric, r.value, r.target, r.ratio, r.verdict) for r in [head, *rows]], strict=True
        )
    )
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for n, r in enumerate([head, *rows]):
        cells = (r.metric, r.value, r.target, r.ratio, r.verdict)
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        )
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
