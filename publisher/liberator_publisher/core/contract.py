"""The sidecar contract: the environment the operator injects and ``liberator publish`` reads,
and every Redis key and MongoDB collection name that more than one process shares.

This list is the one source. The operator's injection builds its env from it, the publisher's
settings parse it, and docs/publisher.md documents it; tests check all three agree. The names
below are read and written by the sidecar, the seed and the operator: each is spelled once here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BATCH_SIZE",
    "CHECKPOINT_COLLECTION",
    "CONTRACT",
    "CONTROL_KEY_PREFIX",
    "DEFAULT_HTTP_PORT",
    "EPOCH_KEY_PREFIX",
    "IDENTITY_SUFFIX",
    "LEASE_KEY_PREFIX",
    "LEASE_TTL_SECONDS",
    "LEDGER_SUFFIX",
    "MAX_AWAIT_MS",
    "PENDING_AGE_SECONDS",
    "RESUME_MARGIN_PERCENT",
    "SEED_KEY_PREFIX",
    "STALL_AFTER_SECONDS",
    "STATUS_KEY_PREFIX",
    "SWEEP_INTERVAL_SECONDS",
    "EnvVar",
    "control_key",
    "default_outbox",
    "seed_key",
    "status_key",
]

DEFAULT_HTTP_PORT = 8099

# Defaults of the contract's numbers: each written once, here. The settings, the loops' own
# settings, the table below and the operator's injection read them from here.
LEASE_TTL_SECONDS = 10.0
STALL_AFTER_SECONDS = 300
RESUME_MARGIN_PERCENT = 25
BATCH_SIZE = 500
MAX_AWAIT_MS = 500
SWEEP_INTERVAL_SECONDS = 10.0
PENDING_AGE_SECONDS = 30.0

# Redis keys, each followed by <namespace>/<name> of the EntityPublisher or EventSeed.
STATUS_KEY_PREFIX = "liberator:status:"
"""The leader's status record (status.py), read by the operator."""
CONTROL_KEY_PREFIX = "liberator:control:"
"""The operator's control record (control.py), read by the leader."""
SEED_KEY_PREFIX = "liberator:seed:"
"""A seed's progress (seed.py), read by the operator."""
LEASE_KEY_PREFIX = "liberator:lease:"
"""The leader lease (leader.py)."""
EPOCH_KEY_PREFIX = "liberator:epoch:"
"""The fencing epoch counter (leader.py)."""

# MongoDB collections, in the watched database.
CHECKPOINT_COLLECTION = "liberator.checkpoints"
"""Both loops' checkpoints, the capture origin and the last restart, per publisher."""
OUTBOX_SUFFIX = ".outbox"
"""The outbox is ``<collection>.outbox`` unless LIBERATOR_OUTBOX_COLLECTION says otherwise."""
IDENTITY_SUFFIX = ".identities"
"""The seed's record of entity ids (identity.py) is ``<collection>.identities``."""
LEDGER_SUFFIX = ".seedledger"
"""The seed's ledger (ledger.py) is ``<collection>.seedledger``."""


def default_outbox(collection: str) -> str:
    """The outbox collection of ``collection`` when none is configured."""
    return f"{collection}{OUTBOX_SUFFIX}"


@dataclass(frozen=True)
class EnvVar:
    """One variable of the sidecar contract."""

    name: str
    """The environment variable's name."""
    required: bool
    """Whether ``liberator publish`` refuses to start without it."""
    default: str
    """What an optional variable means when unset (human-readable)."""
    doc: str
    """One line for docs/publisher.md."""


CONTRACT: tuple[EnvVar, ...] = (
    EnvVar("LIBERATOR_MONGO_URI", True, "", "MongoDB connection string (a replica set)."),
    EnvVar("LIBERATOR_DATABASE", True, "", "Database that holds the entity collection."),
    EnvVar("LIBERATOR_COLLECTION", True, "", "The entity collection to watch."),
    EnvVar(
        "LIBERATOR_ENTITY_TYPE",
        True,
        "",
        "Entity type, the prefix of derived CloudEvent types (`quote` gives `quote.created`).",
    ),
    EnvVar("LIBERATOR_PUBSUB_PROJECT", True, "", "Google Cloud project of the topic."),
    EnvVar("LIBERATOR_TOPIC", True, "", "Pub/Sub topic id that live events go to."),
    EnvVar("LIBERATOR_REDIS_URL", True, "", "Redis URL for the leader lease and status record."),
    EnvVar(
        "PUBSUB_EMULATOR_HOST",
        False,
        "unset (real Pub/Sub)",
        "host:port of a Pub/Sub emulator; the standard Google client variable.",
    ),
    EnvVar(
        "LIBERATOR_OUTBOX_COLLECTION",
        False,
        "<collection>.outbox",
        "Outbox collection, in the same database.",
    ),
    EnvVar(
        "LIBERATOR_SOURCE",
        False,
        "//liberator/<database>/<collection>",
        "CloudEvent `source` attribute (a URI reference).",
    ),
    EnvVar("LIBERATOR_ID_FIELD", False, "_id", "Document field that holds the entity id."),
    EnvVar(
        "LIBERATOR_VERSION_FIELD",
        False,
        "unset (no version)",
        "Document field that holds the entity version (becomes `ce-entityversion`).",
    ),
    EnvVar(
        "LIBERATOR_EVENT_CONTEXT_FIELD",
        False,
        "_event",
        "Document field with the event context (type, correlation and causation ids, "
        "traceparent); stripped from the data.",
    ),
    EnvVar(
        "LIBERATOR_EXCLUDE_FIELDS",
        False,
        "none",
        "Comma-separated top-level fields left out of the event data.",
    ),
    EnvVar(
        "LIBERATOR_HTTP_PORT",
        False,
        str(DEFAULT_HTTP_PORT),
        "Port of /healthz, /readyz and /metrics.",
    ),
    EnvVar(
        "LIBERATOR_LEASE_TTL_SECONDS",
        False,
        f"{LEASE_TTL_SECONDS:g}",
        "Leader lease time-to-live in seconds.",
    ),
    EnvVar(
        "LIBERATOR_PUBLISHER",
        False,
        "<database>/<collection>",
        "`<namespace>/<name>` of the EntityPublisher; keys the lease and status record.",
    ),
    EnvVar(
        "LIBERATOR_STALL_AFTER_SECONDS",
        False,
        str(STALL_AFTER_SECONDS),
        "How long the publisher may not move before it reports itself stalled.",
    ),
    EnvVar(
        "LIBERATOR_RESUME_MARGIN_PERCENT",
        False,
        str(RESUME_MARGIN_PERCENT),
        "Share of the oplog window below which a checkpoint's headroom is reported at risk.",
    ),
    EnvVar("LIBERATOR_LOG_LEVEL", False, "INFO", "DEBUG, INFO, WARNING or ERROR."),
    EnvVar("LIBERATOR_LOG_FORMAT", False, "text", "`text` or `json` (one object a line)."),
    EnvVar(
        "LIBERATOR_POD_NAME",
        False,
        "the host name",
        "Name of this replica, shown as the leader in status (the downward API sets it).",
    ),
    # Tuning: the operator need not set these; the defaults suit most collections.
    EnvVar(
        "LIBERATOR_BATCH_SIZE",
        False,
        str(BATCH_SIZE),
        "Change stream batch size (documents per getMore).",
    ),
    EnvVar(
        "LIBERATOR_MAX_AWAIT_MS",
        False,
        str(MAX_AWAIT_MS),
        "Longest wait of a change stream getMore for new changes, in milliseconds.",
    ),
    EnvVar(
        "LIBERATOR_SWEEP_INTERVAL_SECONDS",
        False,
        f"{SWEEP_INTERVAL_SECONDS:g}",
        "How often the relay sweeps the outbox for stale pending events.",
    ),
    EnvVar(
        "LIBERATOR_PENDING_AGE_SECONDS",
        False,
        f"{PENDING_AGE_SECONDS:g}",
        "Age after which the sweep publishes a pending event the relay's stream missed.",
    ),
)


def status_key(publisher: str) -> str:
    """Redis key of the leader's status record for the ``<namespace>/<name>`` publisher."""
    return f"{STATUS_KEY_PREFIX}{publisher}"


def seed_key(seed_id: str) -> str:
    """Redis hash of ``liberator seed``'s progress for ``<namespace>/<name>`` of an EventSeed,
    which the operator reads into the EventSeed's status."""
    return f"{SEED_KEY_PREFIX}{seed_id}"


def control_key(publisher: str) -> str:
    """Redis key of the operator's control record (pause, restart) for ``<namespace>/<name>``."""
    return f"{CONTROL_KEY_PREFIX}{publisher}"
