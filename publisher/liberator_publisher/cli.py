"""The ``liberator`` command line.

Each subcommand lives in its own module and is imported only when it runs, so the sidecar does
not load the event store's or the operator's code. Publisher commands are listed here; other
distributions' commands (the operator's) come through the ``liberator.commands`` entry point group,
which keeps the publisher free of imports of the operator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from liberator_publisher.runtime.command import Command, UsageError

__all__ = ["main"]

# name -> (module with a COMMAND, one line of help)
BUILTIN: dict[str, tuple[str, str]] = {
    "publish": ("liberator_publisher.sidecar.command", "run the change-data-capture sidecar"),
    "seed": (
        "liberator_publisher.seed.command",
        "publish every existing entity once to the seed topic",
    ),
    "eventstore": ("liberator_publisher.store.eventstore", "store every event, indexed by time"),
    "replay": ("liberator_publisher.store.replay", "republish stored events to a topic"),
}
ENTRY_POINT_GROUP = "liberator.commands"


def available() -> dict[str, tuple[str, str]]:
    """Every subcommand: the built-in ones and those registered by entry points."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, (entry.value, f"(from {entry.value})"))
    return found


def load(target: str) -> Command:
    module_name, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute or "COMMAND")
    if not isinstance(command, Command):
        raise TypeError(f"{target} is not a liberator Command")
    return command


def _described(commands: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Each command with its own help line: an entry point's is read from its ``Command``,
    which means importing it, so this runs only for ``liberator --help``."""
    described = dict(commands)
    for name, (target, _) in commands.items():
        if name not in BUILTIN:
            try:
                described[name] = (target, load(target).help)
            except Exception as error:  # a broken plug-in must not break --help
                described[name] = (target, f"(cannot load {target}: {error})")
    return described


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    asks_help = not args or args[0].startswith("-")
    shown = _described(commands) if asks_help else commands
    top = argparse.ArgumentParser(
        prog="liberator",
        description="Liberator: MongoDB change streams to CloudEvents on Google Pub/Sub.",
        epilog="commands:\n" + "\n".join(f"  {n:12} {h}" for n, (_, h) in shown.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", choices=sorted(commands), metavar="COMMAND")
    if asks_help:
        top.parse_args(args)  # prints help or the error, and exits
        return 2
    name = top.parse_args(args[:1]).command
    command = load(commands[name][0])
    parser = argparse.ArgumentParser(prog=f"liberator {name}", description=command.help)
    command.configure(parser)
    parsed = parser.parse_args(args[1:])
    try:
        return command.run(parsed)
    except UsageError as error:
        print(f"liberator {name}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
