"""One system's run in ``python -m bench.peer``: steps 1-4 of bench/peer.py's docstring.

A step that fails ends the run; its error and how many of its events were pulled are kept in the
:class:`~bench.figures.Figures`, and the other systems still run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

from bench.baselines import quote
from bench.figures import MIB, Figures
from bench.load import Load
from bench.proc import cpu_seconds, rss_bytes
from bench.pull import Arrivals, Puller, StalledError
from bench.subjects import Subject

__all__ = ["PROBE", "Sampler", "measure", "say", "wait_ready"]

PROBE = 10**9
"""``seq`` of the readiness probes, far from the measured events."""

Wait = Callable[[int, int], Arrivals]
"""``Puller.wait`` with the run's deadline, stall and liveness check: (first seq, count)."""


def say(message: str) -> None:
    print(f"[peer] {message}", file=sys.stderr, flush=True)


class Sampler:
    """Peak VmRSS of whatever process ``pid()`` names now, every 0.2 s."""

    def __init__(self, pid: Callable[[], int]) -> None:
        self.peak = 0
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.2):
            with contextlib.suppress(Exception):  # between two runs there is no process
                self.peak = max(self.peak, rss_bytes(self._pid()))

    def close(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def wait_ready(subject: Subject, load: Load, puller: Puller, deadline: float = 180) -> None:
    """Insert one probe a second until one is pulled: the publisher's stream is open.

    Neither system captures what was written before its first stream opened (Liberator's
    first start and Debezium's ``snapshot.mode=no_data`` both begin at "now").
    """
    end = time.monotonic() + deadline
    for i in range(int(deadline) + 1):
        subject.alive()
        load.entities.insert_one(quote(PROBE + i))
        if any(PROBE <= seq < PROBE + i + 1 for seq in list(puller.seen)):
            return
        if time.monotonic() > end:
            break
        time.sleep(1.0)
    raise StalledError(f"no probe event pulled within {deadline:.0f} s of the start")


def measure(
    fig: Figures,
    subject: Subject,
    load: Load,
    puller: Puller,
    *,
    args: argparse.Namespace,
    servers: dict[str, int],
) -> None:
    """Steps 1-4 of bench/peer.py's docstring; a failed step ends the run, its error kept."""
    n, w, entities = args.events, args.warmup, args.entities
    deadline = max(300.0, n / 10)
    wait: Wait = functools.partial(
        puller.wait, deadline=deadline, stall=args.stall_seconds, alive=subject.alive
    )
    fig.loadavg = os.getloadavg()[0]
    step = "start"
    expected = (PROBE, 1)  # the events the current step waits for: (first seq, count)
    sampler: Sampler | None = None
    try:
        subject.start()
        wait_ready(subject, load, puller)
        step, expected = "warm-up", (0, w)
        load.insert(0, w, entities)
        wait(0, w)
        time.sleep(3.0)  # let the last acks and offsets settle
        step = "idle"
        pid = subject.pid()
        _idle(fig, pid, args.idle_seconds)

        step, expected = "e2e", (w, n)
        sampler = Sampler(subject.pid)
        pids = {"process": pid, **servers}
        _end_to_end(fig, load, wait, first=w, n=n, entities=entities, pids=pids)

        step, expected = "drain", (w + n, n)
        _drain(fig, subject, load, wait, first=w + n, n=n, entities=entities)
    except Exception as error:  # the table shows the failed step; the other systems still run
        got = puller.count(*expected) if step != "start" else 0
        _failed(fig, step, error, f"[{got} of {expected[1]} events of this step pulled]")
    finally:
        if sampler is not None:
            fig.peak_rss = sampler.close() or None
        fig.duplicates = puller.messages - len(puller.seen)
        data = puller.sample or b""
        fig.sample = data[max(0, data.find(b'"payload"')) :][:600].decode(errors="replace")
        subject.stop()


def _idle(fig: Figures, pid: int, seconds: float) -> None:
    """Step 2's figures: the CPU over ``seconds`` of quiet, then the RSS."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    fig.idle_millicores = 1000.0 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    fig.idle_rss = rss_bytes(pid)
    say(
        f"{fig.system}: idle RSS {fig.idle_rss / MIB:.0f} MiB, CPU {fig.idle_millicores:.1f} mcores"
    )


def _end_to_end(
    fig: Figures, load: Load, wait: Wait, *, first: int, n: int, entities: int, pids: dict[str, int]
) -> None:
    """Step 3: insert ``n`` as fast as ``insert_many`` goes, to the n-th distinct one pulled."""
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    start = time.time()
    load.insert(first, n, entities)
    arrived = wait(first, n)
    fig.cpu = {name: round(cpu_seconds(p) - before[name], 2) for name, p in pids.items()}
    fig.e2e_seconds = arrived.last_at - start
    say(
        f"{fig.system}: end to end {n / fig.e2e_seconds:,.0f} events/s "
        f"({fig.e2e_seconds:.1f} s), CPU s {fig.cpu}"
    )


def _drain(
    fig: Figures, subject: Subject, load: Load, wait: Wait, *, first: int, n: int, entities: int
) -> None:
    """Step 4: ``n`` written while the publisher is stopped; its start to the n-th pulled."""
    subject.stop()
    load.insert(first, n, entities)
    start = time.time()
    subject.start()
    arrived = wait(first, n)
    fig.drain_seconds = arrived.last_at - start
    fig.drain_first = arrived.first_at - start
    fig.drain_after_first = arrived.last_at - arrived.first_at
    say(
        f"{fig.system}: backlog of {n} drained in {fig.drain_seconds:.1f} s "
        f"(first after {fig.drain_first:.1f} s)"
    )


def _failed(fig: Figures, step: str, error: Exception, pulled: str) -> None:
    """Keep why ``step`` failed; a traceback only for what is not a stall or an exit."""
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    fig.errors[step] = f"{reason} {pulled}"
    say(f"{fig.system}: {step} failed: {error}")
    if not isinstance(error, StalledError | RuntimeError):
        traceback.print_exc()
