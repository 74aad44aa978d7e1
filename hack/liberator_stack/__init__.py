"""The local stack: real MongoDB (mongo-java-server), Pub/Sub emulator, Redis and kube-apiserver.

Each server module (``mongo``, ``pubsub``, ``redis``, ``kube``) exposes two functions:

- ``build(say)``: install or build what the server needs, idempotently, caching under
  :func:`liberator_stack.process.cache_dir`. ``say`` prints progress for people (stderr).
- ``start(run_dir)``: start the server on free loopback ports and return a
  :class:`liberator_stack.process.Server` once it is ready.

:mod:`liberator_stack.stack` ties them together for pytest fixtures, ``make demo`` and the
``hack/stack`` command line.
"""

from liberator_stack.process import Server, StackError, cache_dir
from liberator_stack.stack import SERVER_NAMES, Stack

__all__ = ["SERVER_NAMES", "Server", "Stack", "StackError", "cache_dir"]
