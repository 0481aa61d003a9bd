"""evserve.server: loop threads, sockets, the HTTP/1.1 protocol, routing, handlers, lifecycle and CLI."""
