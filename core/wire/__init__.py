"""Wire formats: how events become bytes, and bytes become what a client asked for.

A front-end (the native line protocol, IRC, WebSocket JSON) is two parts:

- a :class:`WireFormat`, shared by every connection that speaks it, renders
  room events to bytes. It does no I/O, asks nothing of the server and
  keeps no state per connection, so a room event is rendered once per wire
  format present in the room, whatever the number of members, and it is
  tested without a socket;
- a :class:`Protocol`, one per connection, is fed the bytes the client sent
  (already decrypted by its transport) and turns them into the server's
  actions: ``server.log_in()``, ``server.run_command()``,
  ``server.broadcast_message()`` and so on; and it renders what is said to
  its client alone (:meth:`Protocol.render`), where it may use its own state.

Below both, :mod:`chatcore.wire.framing` turns the byte stream into whole
messages and back (lines, or WebSocket messages), so one codec runs over
either.

A plugin adds a front-end by returning a :class:`~chatcore.transports.Scheme`
from ``chatcore_schemes``: the URL scheme, its wire format, its protocol and
whether it runs over TLS. :mod:`chatcore.wire.native` is the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.events import Event, RoomEvent


class WireFormat:
    """Renders events to bytes for one wire protocol.

    Called on whichever thread publishes or sends the event (client threads,
    concurrently): implementations must not keep mutable state.

    :cvar name: a short name for logs and metrics (``"native"``, ``"irc"``).
    :cvar echoes_actions: True if a client of this format gets its own
        actions (``/me``) back, as the native protocol's answer to ``/me``;
        False where the client shows them itself (IRC clients do).
    :cvar echoes_messages: True if a client of this format gets its own chat
        and actions back once they are published, as sent to it alone
        (:meth:`Protocol.render`), with the identity and time the room got
        (IRCv3 ``echo-message``). Its protocol renders them.
    """

    name = "wire"
    echoes_actions = True
    echoes_messages = False

    def encode(self, event: RoomEvent) -> bytes:
        """The bytes every member of the room gets for ``event``; ``b""`` if
        this format shows nothing for it. Called once per event per format."""
        raise NotImplementedError

    def variant(self, rooms: int) -> WireFormat:
        """The format that renders room events for a member of ``rooms``
        rooms: itself, unless lines must look different to a member of
        several (the native protocol names each line's room then). The
        registry attaches each client to its variant's feeds."""
        return self

    def encode_for(self, client: Client, event: Event) -> bytes:
        """The bytes ``client`` gets for an event sent to it alone, for a
        protocol that does not render those itself (:meth:`Protocol.render`,
        where per-connection output belongs: the bundled protocols do);
        ``b""`` for nothing. The default renders it like a room event."""
        return self.encode(event)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Protocol:
    """One connection's side of a wire protocol, on that client's thread.

    The server calls :meth:`connection_made` once the transport is ready
    (after a TLS handshake), then :meth:`data_received` with every chunk the
    client sends, in order, until the connection ends, then
    :meth:`connection_lost`. All three run on the client's own thread, so a
    protocol needs no lock for its own state.

    :ivar client: the :class:`~chatcore.engine.connection.Client`.
    """

    __slots__ = ("client",)  # one per connection: no __dict__

    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self) -> None:
        """Start the conversation; a protocol calls ``server.admit(client)``
        when the client may enter the chat (at once, or after it registered)."""
        self.client.server.admit(self.client)

    def data_received(self, data: bytes) -> None:
        """Bytes from the client (never empty)."""
        raise NotImplementedError

    def render(self, event: Event) -> bytes:
        """The bytes this client gets for an event said to it alone (a
        notice, an error, its welcome, a private message, a replay, the
        :class:`~chatcore.events.Disconnected` that ends it); ``b""`` for
        nothing. Called on whichever thread sends it; the protocol may read
        its own state and ask the server (the names of a room ...).

        The default is the wire format's ``encode_for(client, event)``."""
        return self.client.wire.encode_for(self.client, event)

    def connection_lost(self) -> None:
        """The client closed the connection, or it was closed."""
