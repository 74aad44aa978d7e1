"""The data-plane benchmarks of docs/targets.md in one run: ``python -m bench [--json] [...]``.

Starts the local stack (MongoDB emulator, Pub/Sub emulator, Redis) from hack/liberator_stack,
measures the raw baselines B_ins, B_watch and B_pub, then runs ``liberator publish`` as a
subprocess for end-to-end throughput, latency at half load, RSS, idle CPU and failover, and
prints one table.

Every phase that writes to MongoDB gets a fresh stand-in (a new, empty H2 file), so one phase's
writes (a bigger heap, a bigger H2 file) do not weigh on the next. The ``oplog`` phase checks that
a change-stream ``getMore`` and a look-up by ``_id`` cost the same at 10k and 100k oplog entries.
``LIBERATOR_TEST_MONGO_URI`` runs against a real MongoDB instead (a fresh database per phase).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from bench.options import check, parser  # noqa: E402
from bench.report import machine, table  # noqa: E402
from bench.run import running  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    check(args)
    info = machine()
    started = time.monotonic()
    with running("liberator-bench-", args) as run:
        base = run.phase("baselines", run.baselines)
        run.phase("oplog", run.oplog)
        rate = run.phase("e2e", lambda: run.e2e(base)) or 0.0
        half = args.latency_rate or rate / 2
        if half > 0:
            run.phase("latency", lambda: run.latency(half))
        elif "latency" not in args.skip and (not args.only or "latency" in args.only):
            run.add(
                "latency",
                "not measured",
                "reported",
                "-",
                "skipped: no end-to-end rate (give --latency-rate)",
            )
        run.phase("failover", run.failover)
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    info["mongo"] = (
        "LIBERATOR_TEST_MONGO_URI" if run.real_mongo else "mongo-java-server (fresh per phase)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "table": table(run.rows),
                    "rows": [asdict(r) for r in run.rows],
                    "raw": run.raw,
                    "args": vars(args),
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(table(run.rows))
        print(
            f"\nmachine: {info['cpus']} CPUs ({info['cpu']}), load average "
            f"{info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at end; "
            f"MongoDB: {info['mongo']}; {info['seconds']:.0f} s"
        )
    return 0  # a missed target is a finding in the table, not a failure of the run


if __name__ == "__main__":
    sys.exit(main())
