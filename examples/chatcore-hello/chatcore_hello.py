"""hello://, a toy front-end: ``HELLO NICK [PASSWORD]`` enters, then each line goes to the room."""

from chatcore import hookimpl
from chatcore.events import Chat, Disconnected, Error, Event, Joined, Left, Notice
from chatcore.message import Message
from chatcore.transports import Scheme
from chatcore.wire import Protocol, WireFormat
from chatcore.wire.framing import LineFraming
from chatcore.wire.native import sanitize


class HelloFormat(WireFormat):
    name = "hello"

    def encode(self, event: Event) -> bytes:  # rendered once per event, for the whole room
        if isinstance(event, Chat):
            return f"{event.nick}: {event.text}\n".encode()
        if isinstance(event, (Joined, Left)):
            return f"{'+' if isinstance(event, Joined) else '-'} {event.nick}\n".encode()
        if isinstance(event, Disconnected):  # the server's last word, before it closes
            return f"! bye: {event.reason}\n".encode()
        if isinstance(event, (Error, Notice)):
            return f"{'!' if isinstance(event, Error) else '#'} {event.text}\n".encode()
        return b""  # whatever this toy does not show


class HelloProtocol(Protocol):
    __slots__ = ("framer",)

    def __init__(self, client):
        super().__init__(client)
        self.framer = LineFraming(client.server.max_line)

    def connection_made(self) -> None:
        self.client.notice("say HELLO NICK [PASSWORD]")  # nobody enters before HELLO

    def data_received(self, data: bytes) -> None:
        client = self.client
        for line in self.framer.feed(data):
            if client.closed or line is None:  # gone, or a line over --max-line
                continue
            text = sanitize(line.decode("utf-8", "replace"))
            client.server.pace(client)  # flood control, as for everyone
            if not text:
                continue
            if not client.admitted:
                word, _, rest = text.partition(" ")
                nick, _, password = rest.partition(" ")
                if word.upper() != "HELLO" or not nick:
                    client.error("say HELLO NICK [PASSWORD] first")
                elif (refused := client.server.log_in(client, nick=nick, password=password or None)) is not None:
                    client.error(refused.text)  # the engine's words for it
            else:
                client.server.broadcast_message(Message(client, client.room, text))


@hookimpl
def chatcore_schemes():
    return [Scheme("hello", HelloFormat(), HelloProtocol, default_port=12100, description="a toy protocol")]
