"""``liberator publish``: the change-data-capture sidecar (capture, outbox relay, leader lease,
metrics).
"""
