"""``liberator eventstore`` and ``liberator replay``: keeps every event indexed by time, and
republishes a selection.
"""
