"""What each system measured in ``python -m bench.peer``, and the table that sets them side by
side (Liberator, each Debezium run, and Liberator ÷ that run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MIB", "Figures", "failures", "rows", "table"]

MIB = 1024 * 1024


@dataclass
class Figures:
    """What one system measured. A field left None was not measured (see ``errors``)."""

    system: str
    ran: bool = True
    """False when left out by a flag (its cells read "not run")."""
    loadavg: float = 0.0
    """1-minute load average when this system's run began."""
    e2e_seconds: float | None = None
    """First insert to the N-th distinct message pulled."""
    drain_seconds: float | None = None
    """Publisher start to the N-th distinct message pulled, N written while it was stopped."""
    drain_first: float | None = None
    """Publisher start to the first of the backlog pulled."""
    drain_after_first: float | None = None
    """The first of the backlog pulled to the last: the drain without the start-up."""
    idle_rss: int | None = None
    idle_millicores: float | None = None
    peak_rss: int | None = None
    """Highest VmRSS sampled from the first insert of the e2e step to the end of the drain."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process during the end-to-end step."""
    duplicates: int = 0
    """Messages pulled more than once (redeliveries or republished events)."""
    errors: dict[str, str] = field(default_factory=dict)
    """step -> why it failed."""
    sample: str = ""
    """The first message's data (from Debezium's ``payload``), cut short; ``--json`` shows it."""


def _rate(n: int, seconds: float | None) -> float | None:
    return n / seconds if seconds else None


def _cell(value: float | None, unit: str, fmt: str, fig: Figures) -> str:
    if value is not None:
        return f"{value:{fmt}} {unit}".rstrip()
    if not fig.ran:
        return "not run"
    failed = next(iter(fig.errors), None)  # the step that ended the run (reasons below)
    return f"FAILED ({failed})" if failed else "-"


def rows(figs: list[Figures], n: int) -> list[tuple[str, list[tuple[float | None, str]]]]:
    """(metric, [(value, text) per system]); the value feeds the ratio."""
    out: list[tuple[str, list[tuple[float | None, str]]]] = []

    def add(metric: str, get: Callable[[Figures], float | None], unit: str, fmt: str) -> None:
        out.append((metric, [(get(f), _cell(get(f), unit, fmt, f)) for f in figs]))

    add(
        f"e2e events/s, N={n:,} (1st insert to N-th pulled)",
        lambda f: _rate(n, f.e2e_seconds),
        "",
        ",.0f",
    )
    add("e2e seconds", lambda f: f.e2e_seconds, "s", ".1f")
    add(
        f"backlog drain events/s, N={n:,} (start to N-th pulled)",
        lambda f: _rate(n, f.drain_seconds),
        "",
        ",.0f",
    )
    add("backlog: start to 1st event pulled", lambda f: f.drain_first, "s", ".1f")
    add(
        "backlog events/s after the 1st (start-up left out)",
        lambda f: _rate(n - 1, f.drain_after_first),
        "",
        ",.0f",
    )
    add("idle RSS", lambda f: f.idle_rss and f.idle_rss / MIB, "MiB", ".0f")
    add("peak RSS (e2e and drain)", lambda f: f.peak_rss and f.peak_rss / MIB, "MiB", ".0f")
    add("idle CPU", lambda f: f.idle_millicores, "mcores", ".1f")
    add(f"process CPU for the {n:,} e2e events", lambda f: f.cpu.get("process"), "s", ".2f")
    add("MongoDB stand-in CPU, same span", lambda f: f.cpu.get("stand-in"), "s", ".2f")
    add("Pub/Sub emulator CPU, same span", lambda f: f.cpu.get("pubsub"), "s", ".2f")
    out.append(
        (
            "messages pulled more than once",
            [(None, str(f.duplicates) if f.ran else "not run") for f in figs],
        )
    )
    out.append(
        (
            "load average (1 min) as its run began",
            [(None, f"{f.loadavg:.2f}" if f.ran else "not run") for f in figs],
        )
    )
    return out


def table(figs: list[Figures], n: int) -> str:
    """Liberator, then each Debezium run followed by Liberator ÷ that run."""
    head = ["metric", figs[0].system]
    for fig in figs[1:]:
        head += [fig.system, "ratio"]
    lines = [head]
    for metric, cells in rows(figs, n):
        line = [metric, cells[0][1]]
        mine = cells[0][0]
        for value, text in cells[1:]:
            line += [text, f"{mine / value:.2f}" if mine is not None and value else "-"]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def failures(figs: list[Figures]) -> str:
    return "\n".join(f"- {f.system}, {step}: {why}" for f in figs for step, why in f.errors.items())
