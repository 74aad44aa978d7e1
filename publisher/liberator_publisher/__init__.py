"""Liberator's data plane: MongoDB change streams to CloudEvents on Pub/Sub, through an outbox.

Start reading here:

- ``core/``: what every part agrees on. ``contract.py`` (the sidecar's environment, every shared
  Redis key and collection name), ``event.py`` (a change becomes an outbox document, then a
  message), ``cloudevent.py`` (a message becomes a CloudEvent again), ``settings.py``,
  ``validation.py``, and the pure rules the sidecar evaluates (``stall.py``, ``headroom.py``).
  No network client.
- ``sidecar/``: ``liberator publish``. ``runner.py`` holds the lease and runs a term: the
  ``capture`` loop writes the outbox, the ``relay`` loop publishes it (docs/publisher-runtime.md).
- ``seed/``, ``store/``: ``liberator seed``; ``liberator eventstore`` and ``liberator replay``.
- ``state/``: checkpoints and entity ids in MongoDB, shared by the sidecar and the seed.
- ``consumer/``: the subscriber library for feature teams, re-exported below.
- ``runtime/``: what every process shares (the command seam, logs, the probe server); ``cli.py``
  is ``liberator`` itself.

The planes are checked by import-linter (pyproject.toml, ``make lint``). For feature teams, this
package exports the subscriber library; its imports (the Pub/Sub and Redis clients) load on first
use, so the sidecar does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liberator_publisher.consumer.subscriber import (
        DeadLetters,
        Subscriber,
        SubscriberSettings,
    )
    from liberator_publisher.core.cloudevent import CloudEvent, Handler, MalformedEventError
    from liberator_publisher.core.errors import LiberatorError

__all__ = [
    "CloudEvent",
    "DeadLetters",
    "Handler",
    "LiberatorError",
    "MalformedEventError",
    "Subscriber",
    "SubscriberSettings",
]
__version__ = "0.1.0"

_HOMES = {
    "CloudEvent": "liberator_publisher.core.cloudevent",
    "Handler": "liberator_publisher.core.cloudevent",
    "MalformedEventError": "liberator_publisher.core.cloudevent",
    "LiberatorError": "liberator_publisher.core.errors",
    "DeadLetters": "liberator_publisher.consumer.subscriber",
    "Subscriber": "liberator_publisher.consumer.subscriber",
    "SubscriberSettings": "liberator_publisher.consumer.subscriber",
}


def __getattr__(name: str) -> Any:
    """The exported names, imported on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'liberator_publisher' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
