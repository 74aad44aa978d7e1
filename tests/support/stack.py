"""The local stack's servers for tests: started once, on demand."""

from __future__ import annotations

from liberator_stack import Server, Stack

__all__ = ["running"]


def running(stack: Stack, name: str) -> Server:
    """The stack's server ``name``, built and (re)started unless it is alive already."""
    server = stack.servers.get(name)
    if server is None or not server.alive():
        if server is not None:
            stack.stop(name)
        stack.build((name,))
        server = stack.start(name)
    return server
