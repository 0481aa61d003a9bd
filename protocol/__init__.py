"""evserve.protocol: the wire formats, with no I/O.

Nothing in this package imports sockets, asyncio, threading or CuPy. Input is bytes or
memoryviews, output is dataclasses or lists of buffers, and every client mistake is raised
as a :class:`~evserve.protocol.errors.ProtocolError` that carries its HTTP status.
"""
