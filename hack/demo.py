"""``make demo``: the whole of Liberator on the local single-node cluster (needs root).

Steps: bring up the node (docs/cluster.md) with MongoDB, the Pub/Sub emulator and Redis on its
IP; install Liberator from deploy/overlays/local (2 operator replicas, the webhook behind its
Service, the event store); apply examples/quickstart; run the ``quotes-service`` Deployment (2
pods of examples/quotes_app.py, each with the injected native sidecar); show the events the event
store receives from anyone; delete the leading pod and count that no event is lost; seed through
a real Job; print the status.

Interactive (a terminal on stdin): keeps the live view running until Ctrl-C, which stops
everything (the node goes down) and exits 0. Otherwise, or with ``DEMO_NONINTERACTIVE=1``, it
exits after the status: 0 when every expected event arrived. ``DEMO_QUOTES`` sets how many quotes
the demo itself writes (default 6); the app pods write theirs besides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from liberator_demo.events import seed, take_over, write_quotes
from liberator_demo.install import apply_quickstart, bring_up_node, install_liberator, run_app
from liberator_demo.session import NAMESPACE, PUBLISHER, ROOT, DemoError, Session
from liberator_stack import Stack, StackError, host
from liberator_stack.stack import SERVER_NAMES


def run(demo: Session) -> int:
    """Every step in order; whatever happens, the node goes down. 1 when a step failed."""
    code = 0
    try:
        running = Stack.load(demo.run_dir).servers
        if running:
            raise DemoError(
                f"a stack runs from {demo.run_dir} ({', '.join(running)}): hack/stack down first"
            )
        if host.leftovers():
            raise DemoError("a local node runs already (hack/stack down first)")
        forget_earlier_run(demo)
        bring_up_node(demo)
        install_liberator(demo)
        apply_quickstart(demo)
        run_app(demo)
        write_quotes(demo)
        take_over(demo)
        seed(demo)
        show_status(demo)
        if demo.interactive:
            hold(demo)
            print("\n[demo] Ctrl-C: stopping", flush=True)
        else:
            print("\n[demo] every expected event arrived (non-interactive)", flush=True)
    except KeyboardInterrupt:
        print(f"\n[demo] Ctrl-C at {demo.step_name}: stopping", flush=True)
    except (DemoError, StackError) as error:
        print(f"\n[demo] FAILED at {demo.step_name}\n{error}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("[demo] bringing the node down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            demo.stack.down()
            demo.stack.forget()
        print(f"[demo] total {time.monotonic() - demo.started:.0f}s", flush=True)
    return code


def forget_earlier_run(demo: Session) -> None:
    """Start from empty servers: an earlier demo's MongoDB still holds its quotes (the
    stand-in keeps its file), and the demo writes the same ids again."""
    earlier = [name for name in SERVER_NAMES if (demo.run_dir / name).exists()]
    if earlier:
        print(
            f"      an earlier run's data and logs in {demo.run_dir} ({', '.join(earlier)}) "
            "are removed: the demo starts from empty servers",
            flush=True,
        )
    for name in earlier:
        shutil.rmtree(demo.run_dir / name)


def show_status(demo: Session) -> None:
    demo.step(8, "status, as a platform engineer sees it")
    demo.show("get", "entitypublishers,eventseeds", "-A")
    # The conditions behind STATUS, one a line (kubectl describe shows them too).
    demo.show(
        "-n",
        NAMESPACE,
        "get",
        "entitypublisher",
        PUBLISHER,
        "-o",
        "jsonpath={range .status.conditions[*]}{.type}{'\\t'}{.status}{'\\t'}"
        "{.reason}{'\\t'}{.message}{'\\n'}{end}",
    )
    print("      $ hack/stack status", flush=True)
    out = subprocess.run(
        [str(ROOT / "hack" / "stack"), "status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in (out.stdout + out.stderr).rstrip().splitlines():
        print(f"        {line}", flush=True)
    print(
        "  Where to look next:\n"
        f'    export KUBECONFIG={demo.kubeconfig}   (or: eval "$(hack/stack env)")\n'
        f"    kubectl -n {NAMESPACE} get entitypublisher {PUBLISHER} -o yaml   # conditions,"
        " leader\n"
        f"    kubectl -n {NAMESPACE} logs -l app=quotes-service -c liberator-{PUBLISHER}\n"
        "    docs/cluster.md, docs/architecture.md, docs/operator.md",
        flush=True,
    )


def hold(demo: Session) -> None:
    demo.step(
        9, "running: the live view goes on (the app pods keep writing); Ctrl-C stops everything"
    )
    with contextlib.suppress(KeyboardInterrupt):
        client = demo.mongo()
        while True:
            demo.live_view(client, lambda seen: False, "", timeout=float("inf"))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    interactive = sys.stdin.isatty() and os.environ.get("DEMO_NONINTERACTIVE", "") != "1"
    try:
        quotes = int(os.environ.get("DEMO_QUOTES", "6"))
    except ValueError:
        print(
            f"DEMO_QUOTES={os.environ['DEMO_QUOTES']!r} is not a number: set it to a whole "
            "number of at least 4, or unset it for 6",
            file=sys.stderr,
        )
        return 2
    if quotes < 4:
        print(
            "DEMO_QUOTES must be at least 4 (the demo updates, purchases and deletes quotes)",
            file=sys.stderr,
        )
        return 2
    problem = host.missing_privileges()
    if problem:
        print(
            problem.replace(
                "up cluster needs", "make demo runs a Kubernetes node here and needs"
            ).replace("hack/stack up cluster", "make demo"),
            file=sys.stderr,
        )
        return 1
    with sigterm_as_interrupt():
        return run(Session(quotes, interactive))


if __name__ == "__main__":
    sys.exit(main())
