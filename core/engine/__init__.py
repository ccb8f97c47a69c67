"""The engine: who is connected, which rooms exist, and how output reaches them.

- :mod:`~chatcore.engine.server`: :class:`ChatServer`, the one place events are
  numbered and delivered, and the per-connection handler;
- :mod:`~chatcore.engine.registry`: clients, nicknames and rooms;
- :mod:`~chatcore.engine.connection`: :class:`Client`, one connection;
- :mod:`~chatcore.engine.writer`: the one thread that writes every client's
  queued output without blocking.

Nothing here knows a wire format or a transport: those are in
:mod:`chatcore.wire` and :mod:`chatcore.transports`.
"""
