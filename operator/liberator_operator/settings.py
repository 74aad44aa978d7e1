"""The operator's own settings, read from its environment (``LIBERATOR_OPERATOR_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_IMAGE", "OperatorSettings", "SettingsError", "SidecarMode"]

DEFAULT_IMAGE = "ghcr.io/liberator-io/liberator:0.1.0"
SidecarMode = Literal["auto", "native", "container"]
_MODES: tuple[SidecarMode, ...] = ("auto", "native", "container")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator injects, provisions and polls. Every field has an env variable."""

    image: str = DEFAULT_IMAGE
    """Sidecar and seed Job image when the EntityPublisher names none
    (``LIBERATOR_OPERATOR_IMAGE``)."""
    namespace: str = "liberator-system"
    """The operator's own namespace; never injected (``LIBERATOR_OPERATOR_NAMESPACE``)."""
    sidecar_mode: SidecarMode = "auto"
    """``native`` (init container with restartPolicy Always), ``container``, or ``auto``: native
    when the API server is 1.29 or later (``LIBERATOR_OPERATOR_SIDECAR_MODE``)."""
    pubsub_emulator_host: str | None = None
    """host:port of a Pub/Sub emulator, used by the operator's admin calls and passed into the
    sidecars and seed Jobs (``PUBSUB_EMULATOR_HOST``, the standard variable)."""
    status_interval: float = 10.0
    """Seconds between reads of each publisher's data-plane status record
    (``LIBERATOR_OPERATOR_STATUS_INTERVAL``)."""
    seed_interval: float = 5.0
    """Seconds between reads of each unfinished seed's Job and counts
    (``LIBERATOR_OPERATOR_SEED_INTERVAL``)."""
    retry_delay: float = 30.0
    """Seconds before retrying a publisher whose reference (a Secret) is missing
    (``LIBERATOR_OPERATOR_RETRY_DELAY``)."""
    backoff_max: float = 300.0
    """Upper bound in seconds of the exponential backoff for transient Pub/Sub errors
    (``LIBERATOR_OPERATOR_BACKOFF_MAX``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read the settings; raise :class:`SettingsError` naming the bad variable."""
        env = os.environ if env is None else env
        defaults = cls()
        mode = env.get("LIBERATOR_OPERATOR_SIDECAR_MODE", defaults.sidecar_mode)
        if mode not in _MODES:
            raise SettingsError(
                f"LIBERATOR_OPERATOR_SIDECAR_MODE={mode!r} is invalid: "
                "use auto, native or container"
            )
        image = env.get("LIBERATOR_OPERATOR_IMAGE", defaults.image).strip()
        if not image:
            raise SettingsError("LIBERATOR_OPERATOR_IMAGE is empty: give a container image")
        namespace = env.get("LIBERATOR_OPERATOR_NAMESPACE", defaults.namespace).strip()
        if not namespace:
            raise SettingsError(
                "LIBERATOR_OPERATOR_NAMESPACE is empty: give the operator's namespace"
            )
        emulator = env.get("PUBSUB_EMULATOR_HOST", "").strip() or None
        if emulator is not None and ":" not in emulator:
            raise SettingsError(f"PUBSUB_EMULATOR_HOST={emulator!r} is invalid: use host:port")
        return cls(
            image=image,
            namespace=namespace,
            sidecar_mode=mode,
            pubsub_emulator_host=emulator,
            status_interval=_seconds(
                env, "LIBERATOR_OPERATOR_STATUS_INTERVAL", defaults.status_interval
            ),
            seed_interval=_seconds(env, "LIBERATOR_OPERATOR_SEED_INTERVAL", defaults.seed_interval),
            retry_delay=_seconds(env, "LIBERATOR_OPERATOR_RETRY_DELAY", defaults.retry_delay),
            backoff_max=_seconds(env, "LIBERATOR_OPERATOR_BACKOFF_MAX", defaults.backoff_max),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number: give seconds, e.g. 10") from None
    if not 0 < value <= 86400:
        raise SettingsError(f"{name}={raw!r} is out of range: give seconds between 0 and 86400")
    return value
