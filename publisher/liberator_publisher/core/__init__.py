"""The pure core: the sidecar contract and shared names, the event model and its encoding, value
rules, time formats, and the pure rules the runtime products evaluate. It imports bson and no
network client.
"""
