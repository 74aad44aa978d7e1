"""``liberator seed``: publishes every existing entity once to the seed topic, with a ledger to
resume.
"""
