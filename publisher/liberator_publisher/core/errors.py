"""Liberator's errors: one base class, so a caller can catch everything Liberator raises on
purpose, and each kind keeps the built-in base that says what it is::

    LiberatorError
    ├── UsageError (ValueError)          a flag or variable is wrong: exit 2, the message names it
    │   └── ConfigError                  a sidecar contract variable (settings.py)
    ├── ControlError (ValueError)        a malformed control record or spec.restartFrom
    ├── EncodingError (ValueError)       a document with no deterministic encoding
    ├── Unpublishable (ValueError)       an event Pub/Sub would refuse: the outbox marks it failed
    ├── MalformedEventError (ValueError) a Pub/Sub message that is not a CloudEvent
    ├── CheckpointError (ValueError)     an unreadable checkpoint document: the sidecar parks
    ├── FencedError (RuntimeError)       a write from an older epoch: another replica leads
    ├── StreamLostError (RuntimeError)   the change stream cannot resume: the sidecar parks
    ├── KeyPausedError (RuntimeError)    a publish for an ordering key paused by a failure
    └── LedgerError (ValueError)         a seed ledger that does not match the run: exit 1

EncodingError, Unpublishable and MalformedEventError are ReasonedErrors: their ``reason`` reads on
its own, so it goes as it is into a failed outbox document or a dead letter.

Values that break a rule raise validation.InvalidValue (a ValueError without a source); the
caller turns it into a UsageError or ConfigError naming where the value came from.
"""

from __future__ import annotations

__all__ = ["LiberatorError", "ReasonedError", "UsageError"]


class LiberatorError(Exception):
    """Anything Liberator raises on purpose."""


class ReasonedError(LiberatorError):
    """An error with a readable ``reason``: the kinds that name what is wrong with one
    document, event or message (each adds the built-in base that says what it is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        """Readable reason, fit for an outbox document's ``reason`` or a dead letter's."""


class UsageError(LiberatorError, ValueError):
    """A flag or variable is wrong. The message names it and says the fix; ``liberator`` prints
    ``liberator <command>: <message>`` and exits 2 (cli.py, once for every subcommand)."""
