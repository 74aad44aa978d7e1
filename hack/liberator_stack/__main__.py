"""``hack/stack up|status|down``: the local stack for people and scripts."""

from __future__ import annotations

import argparse
import shlex
import sys

from liberator_stack import cluster, deploy, mongo, promtool
from liberator_stack.process import StackError, log_tail
from liberator_stack.stack import DEFAULT_NAMES, SERVER_NAMES, Stack, default_run_dir


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [n for n in getattr(args, "names", []) if n not in SERVER_NAMES]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}: choose from {', '.join(SERVER_NAMES)}")
    run_dir = default_run_dir()
    stack = Stack.load(run_dir)
    try:
        if args.command == "build":
            stack.build(tuple(args.names) or DEFAULT_NAMES)
            if not args.names:
                # `make test` runs this before pytest: the monitoring tests need promtool.
                promtool.build(stack.say)
        elif args.command == "up":
            bring_up(stack, tuple(args.names) or DEFAULT_NAMES)
        elif args.command == "image":
            cluster.build_image(stack.say)
        elif args.command == "env":
            print_exports(stack)
        elif args.command == "status":
            print_status(stack)
        elif args.command == "down":
            stack.down()
            stack.forget()
            # Also what a crashed cluster left without a state file (fixed paths, see host.py).
            cluster.cleanup(stack.say)
            print("[stack] stopped", file=sys.stderr)
    except StackError as error:
        print(f"hack/stack: {error}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hack/stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build what is missing, start servers, print export lines")
    up.add_argument(
        "names",
        nargs="*",
        metavar="SERVER",
        help=f"any of {', '.join(SERVER_NAMES)} (default: "
        f"{' '.join(DEFAULT_NAMES)}; the cluster needs root)",
    )
    build = sub.add_parser(
        "build",
        help="only build or install the servers (with no names, also the test tools: promtool)",
    )
    build.add_argument("names", nargs="*", metavar="SERVER", help="as for up")
    sub.add_parser(
        "image",
        help="build the project's image from the Dockerfile (buildah) and "
        "load it into the node when it runs",
    )
    sub.add_parser("status", help="list running servers")
    sub.add_parser("env", help="print the export lines of running servers")
    sub.add_parser("down", help="stop every server")
    return parser


def bring_up(stack: Stack, names: tuple[str, ...]) -> None:
    """Restart what died, start the rest of ``names``, save the state, print export lines."""
    if "mongo" in names:
        # Before any build or start: a missing pymongo or a bad cap fails now.
        mongo.require_client()
        mongo.oplog_limits()
    for name in list(stack.servers):
        if not stack.servers[name].alive():
            print(f"[stack] {name} is no longer running; restarting it", file=sys.stderr)
            stack.stop(name)
    stack.up(names)
    stack.save()
    print_exports(stack)


def print_status(stack: Stack) -> None:
    """Each server, running or DEAD (with its log tails), and the node's pods."""
    if not stack.servers:
        print("nothing runs")
    for name, server in stack.servers.items():
        state = "running" if server.alive() else "DEAD"
        pids = ",".join(str(p.pid) for p in server.procs)
        print(f"{name:8} {state:8} pids={pids} {server.details}")
        if not server.alive():
            for proc in server.procs:
                print(log_tail(proc.log, 10))
    cluster_server = stack.servers.get("cluster")
    if cluster_server is not None and cluster_server.alive():
        print_pods(cluster_server.exports["KUBECONFIG"])


def print_pods(kubeconfig: str) -> None:
    """What runs on the node: every pod, with its READY count and status."""
    try:
        out = deploy.kubectl(kubeconfig, "get", "pods", "-A", "--no-headers", timeout=30)
    except StackError as error:
        print(f"pods: {error}")
        return
    for line in out.splitlines():
        namespace, name, ready, status = line.split()[:4]
        print(f"  pod {namespace}/{name} {ready} {status}")


def print_exports(stack: Stack) -> None:
    for key, value in sorted(stack.exports().items()):
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main())
