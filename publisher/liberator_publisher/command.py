"""A ``liberator`` subcommand: how it adds its flags and how it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "UsageError"]


class UsageError(ValueError):
    """A flag or variable is wrong. The message names it and says the fix; ``liberator`` prints
    ``liberator <command>: <message>`` and exits 2 (cli.py, once for every subcommand)."""


@dataclass(frozen=True)
class Command:
    """One subcommand. Modules expose an instance named ``COMMAND``."""

    name: str
    """What follows ``liberator`` on the command line."""
    help: str
    """One line for ``liberator --help``."""
    configure: Callable[[argparse.ArgumentParser], None]
    """Adds the subcommand's flags to its parser."""
    run: Callable[[argparse.Namespace], int]
    """Runs it with the parsed flags; returns the process exit code."""
