"""A ``liberator`` subcommand: how it adds its flags and how it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from liberator_publisher.core.errors import UsageError
from liberator_publisher.core.validation import InvalidValue

__all__ = ["Command", "UsageError", "checked", "flag_or_env"]

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


def flag_or_env(
    flag_value: str | None,
    env: Mapping[str, str],
    variable: str,
    flag: str,
    parse: Callable[[str], _T],
) -> _T:
    """The flag's value, else the variable's, checked by ``parse`` (a rule of validation.py);
    a :class:`UsageError` names whichever the value came from, or both when neither is set."""
    given = flag_value is not None
    value = (flag_value if flag_value is not None else env.get(variable, "")).strip()
    if not value:
        raise UsageError(f"{flag}: required; pass it or set {variable}")
    return checked(parse, value, flag if given else variable)
