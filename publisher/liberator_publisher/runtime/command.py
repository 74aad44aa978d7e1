"""A ``liberator`` subcommand: how it adds its flags and how it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from liberator_publisher.core.errors import UsageError
from liberator_publisher.core.validation import InvalidValue

__all__ = ["Command", "UsageError", "checked"]

_T = TypeVar("_T")




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


def checked(parse: Callable[[str], _T], value: str, where: str) -> _T:
    """``parse(value)`` (a rule of validation.py), its ``InvalidValue`` turned into a
    :class:`UsageError` that names ``where``: the flag or variable the value came from."""
    try:
        return parse(value)
    except InvalidValue as invalid:
        raise UsageError(invalid.named(where)) from None
