"""The Pub/Sub permissions each command needs, and one readable line when one is denied.

Pub/Sub answers a missing IAM permission with ``PermissionDenied`` (403) and a message that does
not say which permission was missing. The call that failed does: each call below needs exactly
one permission. The emulator has no IAM, so this mapping is documented (docs/operations.md) and
unit-tested, not exercised against a server.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PERMISSIONS", "Permission", "denied_message"]


@dataclass(frozen=True)
class Permission:
    """What one Pub/Sub call needs."""

    name: str
    """The IAM permission, such as ``pubsub.topics.publish``."""
    role: str
    """The smallest predefined role that grants it."""


PERMISSIONS: dict[str, Permission] = {
    # liberator seed: checks the seed topic exists before it writes anything, then publishes.
    "get_topic": Permission("pubsub.topics.get", "roles/pubsub.viewer"),
    "publish": Permission("pubsub.topics.publish", "roles/pubsub.publisher"),
    # liberator eventstore: pull and acknowledge only (it never calls get_subscription).
    "pull": Permission("pubsub.subscriptions.consume", "roles/pubsub.subscriber"),
    "acknowledge": Permission("pubsub.subscriptions.consume", "roles/pubsub.subscriber"),
}
"""Pub/Sub call -> the permission it needs."""


def denied_message(call: str, resource: str, error: BaseException | str = "") -> str:
    """One line for a ``PermissionDenied`` of ``call`` on ``resource``, naming the permission."""
    needed = PERMISSIONS.get(call)
    detail = str(error).splitlines()[0].strip() if str(error).strip() else "PermissionDenied"
    if needed is None:
        return (
            f"permission denied for {call} on {resource} ({detail}); see the Pub/Sub "
            "permissions in docs/operations.md"
        )
    return (
        f"permission {needed.name} denied on {resource} ({detail}): grant it to the "
        f"workload's Google service account (e.g. {needed.role} on that resource); see "
        "docs/operations.md"
    )
