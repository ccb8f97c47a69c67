"""The message object that travels through the filter chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from chatcore.engine.connection import Client

#: ``"chat"`` and ``"action"`` go to a room; ``"private"`` (``/msg``) goes to
#: one client, :attr:`Message.recipient`; ``"leave"`` is the reason a client
#: gives for leaving (``/quit``, IRC ``QUIT`` and ``PART``), shown to the room
#: it leaves: filtered like the rest of what it says, never delivered as a message.
#: ``"notice"`` is chat said as a notice (IRC's ``NOTICE #room``), delivered
#: as a :class:`~chatcore.events.Chat` with ``notice`` set.
MessageKind = Literal["chat", "action", "private", "leave", "notice"]


class Message:
    """A line of chat on its way to a room, or to one client (``/msg``).

    Filters (``chatcore_message`` implementations) may change :attr:`text` or
    call :meth:`reject`. pluggy does not pipe results from one implementation
    to the next, so the chain works on this one mutable object.

    :ivar sender: the :class:`~chatcore.engine.connection.Client` that sent it.
    :ivar room: the room it goes to; for a private message, the sender's
        room (where it was written), not where it is delivered.
    :ivar text: the text, already decoded and stripped of control characters.
    :ivar kind: ``"chat"`` for ``<nick> text``, ``"action"`` for
        ``* nick text`` (``/me``), ``"notice"`` for chat said as a notice
        (IRC's ``NOTICE #room``; shown as chat but to IRC clients), ``"private"`` for ``*nick* text``
        (``/msg``), seen only by :attr:`recipient`; ``"leave"`` for a leave
        reason (``/quit REASON``): rejected, it is dropped, not the leave.
    :ivar recipient: the client a private message goes to; ``None`` for chat
        and actions.
    :ivar rejected: ``None``, or the reason a filter gave for rejecting it.
    :ivar tags: client-only tags the sender attached to chat, as IRCv3 writes
        them (:attr:`chatcore.events.Chat.tags`), or ``""``.
    """

    __slots__ = ("kind", "recipient", "rejected", "room", "sender", "tags", "text")

    def __init__(
        self,
        sender: Client,
        room: str,
        text: str,
        kind: MessageKind = "chat",
        *,
        recipient: Client | None = None,
        tags: str = "",
    ) -> None:
        self.sender = sender
        self.room = room
        self.text = text
        self.kind: MessageKind = kind
        self.recipient = recipient
        self.rejected: str | None = None
        self.tags = tags

    def reject(self, reason: str) -> None:
        """Stop this message: it is not delivered, and only the sender sees
        ``! <reason>``."""
        self.rejected = reason

    def __repr__(self) -> str:
        to = self.room if self.recipient is None else self.recipient.nick
        return f"<Message {self.kind} from {self.sender.nick!r} to {to!r}: {self.text!r}>"
