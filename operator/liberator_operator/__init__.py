"""Liberator's control plane: a kopf operator for EntityPublisher and EventSeed."""
