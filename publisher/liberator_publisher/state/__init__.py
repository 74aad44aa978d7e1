"""What the sidecar and the seed keep in MongoDB: checkpoints (with the oplog window) and the
record of entity ids.
"""
