"""Pub/Sub resource ids: one rule for every input path (the sidecar's settings, ``liberator seed
--topic``, ``liberator replay --topic``, ``liberator eventstore --subscription``).

Pure. Pub/Sub accepts a topic or subscription id of 3-255 letters, digits and ``- _ . ~ + %``,
starting with a letter and not with ``goog``. The CRD's CEL rule says the same for
``spec.pubsub.topic`` and the subscription names.
"""

from __future__ import annotations

import re

__all__ = ["RESOURCE_ID_RULE", "is_resource_id"]

_RESOURCE_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")

RESOURCE_ID_RULE = ("3-255 of letters, digits and - _ . ~ + %, starting with a letter and not "
                    "with 'goog'")
"""What :func:`is_resource_id` checks, as error messages say it."""


def is_resource_id(value: str) -> bool:
    """Whether Pub/Sub accepts ``value`` as a topic or subscription id."""
    return bool(_RESOURCE_ID.fullmatch(value)) and not value.lower().startswith("goog")
