"""The engine: who is connected, which rooms exist, and how output reaches them.

- :mod:`~chatcore.engine.server`: :class:`ChatServer`, the chat: the
  registry, the actions (log in, messages, rooms, nicks, private messages)
  and :meth:`~chatcore.engine.server.ChatServer.publish`, the one place
  room events are numbered and delivered;
- :mod:`~chatcore.engine.registry`: clients, nicknames and rooms;
- :mod:`~chatcore.engine.connection`: :class:`Client`, one connection;
- :mod:`~chatcore.engine.feed`: one feed per room and wire format;
- :mod:`~chatcore.engine.writer`: the one thread that writes every client's
  queued output without blocking;
- :mod:`~chatcore.engine.gate`: admission, passwords and other secrets,
  pacing, deadlines;
- :mod:`~chatcore.engine.serving`: each connection's work, from accept to
  leave (the transport's handshake, the refusal, the read loop), on a
  thread while its client talks (:mod:`~chatcore.engine.turns`), and the
  deadline sweeper;
- :mod:`~chatcore.engine.backplane`: the seam to other servers;
- :mod:`~chatcore.engine.limits`, :mod:`~chatcore.engine.auth`,
  :mod:`~chatcore.engine.stats`, :mod:`~chatcore.engine.affinity`,
  :mod:`~chatcore.engine.allocator`: the tools they use.

The engine knows no wire format: formats and protocols are the front-end
plugins' (:mod:`chatcore.wire`). It uses the transports
(:mod:`chatcore.transports`: the listeners, TLS) to serve connections, the
layer below it.
"""
