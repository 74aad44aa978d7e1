"""Liberator's data plane: MongoDB change streams to CloudEvents on Pub/Sub, through an outbox."""

from liberator_publisher.contract import CONTRACT, EnvVar

__all__ = ["CONTRACT", "EnvVar"]
__version__ = "0.1.0"
