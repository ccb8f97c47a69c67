"""Hook specifications: the public API for chatcore plugins.

A plugin is a module (or object) with functions named after these hooks and
marked with :data:`chatcore.hookimpl`. An implementation may accept any subset
of a hook's arguments, by name, so hooks can gain arguments without breaking
plugins.

Threads: chatcore reads each client's input on a thread of its own while
the client talks (one thread at a time per client, so its lines are handled
in order; a quiet client holds none), so most hooks are called on a
client's thread, and calls from different clients overlap. A plugin that
keeps shared state must lock it (or keep it per client in ``client.data``).

Failures: a plugin that raises in a per-connection or per-message hook is
logged with its name and skipped; the event goes on with the other plugins.
A plugin that raises while the server starts stops the start with one clear
line. See docs/plugins.md for the full contract of every hook.

Answers: in a hook marked ``firstresult`` the first *true* answer decides.
``None``, ``False`` and ``""`` all mean "not mine", and the next plugin is
asked, so a plugin may answer a yes/no hook with ``False``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatcore.markers import hookspec

if TYPE_CHECKING:
    from chatcore.config import Config
    from chatcore.engine.accounts import AccountService
    from chatcore.engine.backplane import Backplane
    from chatcore.engine.connection import Client
    from chatcore.engine.history import HistoryService
    from chatcore.engine.rooms import RoomState
    from chatcore.engine.server import ChatServer
    from chatcore.events import Joined, PrivateMessage, RoomEvent
    from chatcore.message import Message
    from chatcore.routes import Route
    from chatcore.transports import Scheme

# ---------------------------------------------------------------------------
# Start-up and shutdown
# ---------------------------------------------------------------------------


@hookspec
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options for ``chatcore serve``.

    Called once per plugin selected with ``--plugins``, before the command
    line is parsed. Use ``parser.add_argument_group("name")`` so ``--help``
    shows the plugin's options together.

    :param parser: the ``chatcore serve`` argument parser.

    Called on the main thread, before the server exists.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_configure(config: Config) -> None:
    """Read and check the parsed configuration.

    Raise :class:`chatcore.UsageError` for a bad option value: ``chatcore
    serve`` prints it as one line and exits with status 2.

    :param config: the parsed configuration; ``config.options`` holds every
        option, including those the plugins added.

    Called on the main thread, once, after the command line is parsed and
    before the server binds its port.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_server_start(server: ChatServer) -> None:
    """The server is listening and about to accept connections.

    Start background threads or open files here. An exception stops the
    server from starting.

    :param server: the running server (``server.address`` is the bound
        address, ``server.registry`` the connected clients).

    Called once on the thread that starts the server.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_server_stop(server: ChatServer) -> None:
    """The server has stopped: every client has been disconnected.

    Client threads get the shutdown deadline (two seconds) to finish; one
    still running after it may report its departure late.

    Flush and close what ``chatcore_server_start`` opened. Every plugin's
    implementation runs even if another one raises.

    :param server: the stopping server.

    Called once on the thread that stops the server.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_reload(server: ChatServer, old: argparse.Namespace, new: argparse.Namespace) -> Callable[[], None] | None:
    """The configuration is being reloaded (SIGHUP): check the new options
    and say how to apply them.

    In two steps, so that one bad value keeps the whole running
    configuration: first every plugin checks ``new`` here and raises
    :class:`chatcore.UsageError` for a bad value, having changed nothing
    (read a file, build new settings, but do not use them yet). If all
    accept, the server makes ``new`` its options (``server.config.options``)
    and calls every function returned here, in the same order, to apply it.
    An option a plugin reads from ``server.config.options`` when it needs it
    changes without any work. Options marked
    :func:`~chatcore.config.restart_only` keep their running values in
    ``new``; the server logs them as "needs a restart". A reload is also the
    moment to reopen files (log rotation), whatever changed.

    :param server: the running server.
    :param old: the running options.
    :param new: the options as the configuration file (and the unchanged
        command line and environment) now give them.
    :return: ``None``, or a function without arguments that applies ``new``.
        If it raises, the failure is logged with the plugin's name and the
        other plugins' changes still apply.

    Called on the main thread, which handled the signal; reloads never
    overlap each other, but client threads keep running: apply a change as
    one reference swap, or under the plugin's own lock. An exception other
    than ``UsageError`` in the check abandons the reload too, logged with
    the plugin's name.

    .. versionadded:: 0.2
    """


# ---------------------------------------------------------------------------
# Connections and rooms
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def chatcore_connection_arriving(address: tuple[str, int], server: ChatServer) -> str | None:
    """A connection arrived; decide whether to accept it.

    :param address: the peer's ``(host, port)``.
    :param server: the server it arrived at (for the plugin's per-server
        state in ``server.config.data``; versionadded 0.2).
    :return: ``None`` to accept, or a reason (a short sentence) to refuse:
        the client is sent ``! <reason>`` and disconnected. The first plugin
        that returns a reason decides.

    Called on the new connection's own thread, before it has a nickname.
    Calls for different connections overlap.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_welcome(client: Client) -> list[str] | None:
    """Lines of welcome text for a client that just connected.

    :param client: the new client; ``client.nick`` and ``client.room`` are
        set.
    :return: a list of lines (or ``None``). Each line is sent to the client
        as a notice (``* <line>``), plugins' lines in hook order.

    Called on the client's thread, before ``chatcore_client_joined``.
    Calls for different clients overlap.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_client_joined(client: Client, room: str, event: Joined) -> None:
    """A client entered a room: on connecting, or by /join or JOIN.

    The other members have been sent ``* <nick> joined``.

    :param client: the client; ``client.room == room``.
    :param room: the room entered.
    :param event: the :class:`~chatcore.events.Joined` the members were
        sent, numbered: what was said in the room before it (a smaller
        offset in its epoch) was said before the client's live lines begin,
        which is where a replay of the room's history stops (the history
        plugin), so that no line comes both replayed and live.

    Called on the client's own thread. Calls for different clients overlap.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1 ``event``
    """


@hookspec
def chatcore_account_changed(client: Client, old: str) -> None:
    """A client logged in to an account, out of one, or was logged out (its
    account dropped): ``client.account`` is the account now (``""``: none).

    :param client: the client, registered or not yet (IRC's SASL logs in
        during registration).
    :param old: the account it was logged in to before, or ``""``.

    Called on whichever thread changed it (the client's own for a login;
    an operator's for a drop), after the change. Calls for different
    clients overlap. The IRC plugin tells channel peers (account-notify).

    .. versionadded:: 0.3
    """


@hookspec
def chatcore_client_left(client: Client, room: str, reason: str) -> None:
    """A client left a room: by disconnecting, or by /part, PART or a kick.

    Called exactly once per departure, whatever ended it.

    :param client: the client that left.
    :param room: the room it left.
    :param reason: why, for example ``"quit"``, ``"connection closed"``,
        ``"connection lost"``, ``"slow consumer"``, ``"server shutting
        down"``, or a reason given by the user or a plugin.

    Called on the client's own thread. Calls for different clients overlap.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Messages and commands
# ---------------------------------------------------------------------------


@hookspec
def chatcore_message(message: Message) -> None:
    """A message is on its way to a room or, for ``/msg``, to one client:
    the filter chain.

    Every implementation may rewrite ``message.text`` or call
    ``message.reject(reason)``; only the sender sees the reason (as
    ``! <reason>``) and the message is not delivered. The chain stops at the
    first rejection. Order the chain with ``tryfirst``/``trylast``.
    Private messages (``message.kind == "private"``, ``message.recipient``
    set) and an IRC user's NOTICE to a channel (``"notice"``) pass through
    the same chain, so the same rules apply to them.

    If an implementation raises, the error is logged with the plugin's name
    and the message goes on through the rest of the chain (see
    docs/plugins.md for why a failing filter does not drop the message).

    :param message: the message (``text``, ``sender``, ``room``, ``kind``).

    Called on the sender's thread. Calls from different senders overlap.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_message_delivered(message: Message, recipients: int) -> None:
    """A message was delivered to its room: what observers should record.

    Also called for a private message (``message.kind == "private"``),
    delivered to ``message.recipient`` only; a plugin that keeps room
    history must skip those.

    :param message: the message as it was delivered, after all filters.
    :param recipients: how many clients in this server it was queued to.

    Called on the sender's thread after the message was queued to every
    recipient. Calls from different senders overlap; keep this fast.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_private_received(client: Client, event: PrivateMessage) -> None:
    """A private message reached its recipient on this server: said here
    (after the filter chain, before the sender's copy) or on another server
    of a cluster (brought by the backplane). The place to keep private
    lines (the history plugin keeps those between two logged-in accounts);
    ``chatcore_message_delivered`` is the sender's side, on its server.

    :param client: the recipient, on this server.
    :param event: the message as the recipient got it, with its ID, its
        time and the sender's account (:class:`~chatcore.events.PrivateMessage`).

    Called on the sender's thread, or the backplane's for one from another
    server, just before the message is queued to ``client`` (so that what
    a plugin keeps is there once the client has the message: it may ask
    for its history at once). Calls overlap; keep this fast: the message
    waits for it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    """A client sent a command (a line starting with ``/``).

    Handle the commands you own and reply to the client (every command
    should answer with a notice or an error).

    :param client: the client that sent it.
    :param name: the command's name, lower case, without the ``/``.
    :param args: the rest of the line, stripped.
    :return: ``True`` if handled; the first plugin that returns ``True``
        wins. If none does, the client gets ``! unknown command /<name>
        (try /help)``.

    Called on the client's own thread. Calls for different clients overlap.

    .. versionadded:: 0.1
    """


@hookspec
def chatcore_command_help(client: Client) -> list[tuple[str, str]] | None:
    """The commands a plugin provides, for ``/help``.

    :param client: who asked. A plugin may leave out what this client cannot
        use (the opers plugin lists its operator commands to operators only).
    :return: a list of ``(usage, one-line help)`` pairs, for example
        ``[("/quit [REASON]", "leave the chat")]``.

    Called on the thread of the client that asked for help.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       The ``client`` argument (implementations without it still work).
    """


@hookspec
def chatcore_room_event(server: ChatServer, event: RoomEvent) -> None:
    """An event was said to a room's members in this server.

    Everything said to a room (chat, actions, joins, leaves, nick changes,
    room notices) passes through :meth:`ChatServer.publish
    <chatcore.engine.server.ChatServer.publish>`, and that is where this hook
    is called, after the event was queued to every member here: the one
    place a plugin can record what rooms here heard (history, logs), those
    events a cluster brought from other servers included. The event has its
    identity (``event.epoch``, ``event.offset``). Carrying events to other
    servers is the backplane's (``chatcore_backplane``), not this hook's.

    :param server: the server it was published in.
    :param event: the :class:`~chatcore.events.RoomEvent`, immutable.

    Called on the thread that published the event. Calls overlap, also for
    one room; keep this fast.

    .. versionadded:: 0.2 (replaces ``chatcore_room_line``)
    .. versionchanged:: 0.3 also for events from other servers of a cluster
    """


@hookspec
def chatcore_room_changed(server: ChatServer, event: RoomEvent) -> None:
    """A room's state or membership changed here: a join, a leave (a kick
    is one with ``kicked_by``), a rename, a topic or a mode change (the
    events whose ``changes_state`` is true), after the room's state took it
    and its members here were told; from other servers of a cluster too.

    What :func:`chatcore_room_event` sees, without the chat: a plugin that
    records what people did to rooms (the ``logger``'s audit trail) costs
    nothing per chat line.

    :param server: the server it was published in.
    :param event: the :class:`~chatcore.events.RoomEvent`, immutable.

    Called on the thread that published the event. Calls overlap.

    .. versionadded:: 0.4
    """


# ---------------------------------------------------------------------------
# Listeners and clusters
# ---------------------------------------------------------------------------


@hookspec
def chatcore_schemes() -> list[Scheme] | None:
    """The listener URL schemes a plugin serves (``--listen NAME://HOST:PORT``).

    :return: :class:`~chatcore.transports.Scheme` objects: each binds a
        scheme name to a wire format, a per-connection protocol factory and
        whether it runs over TLS. The bundled ``native`` plugin returns
        ``tcp`` and ``tls``. Two plugins returning the same name is a start-up
        error.

    Called once on the main thread, after the plugins are loaded and before
    the command line is checked. The protocol factory is called on each new
    connection's own thread; the wire format's methods on any client thread,
    concurrently (see :mod:`chatcore.wire`).

    .. versionadded:: 0.2
    """


@hookspec
def chatcore_api_routes(server: ChatServer) -> list[Route] | None:
    """HTTP paths a plugin serves on the ``api`` plugin's listeners
    (``http://``, ``https://``), beside the API's own under ``/api/``.

    :param server: the server being started.
    :return: :class:`~chatcore.routes.Route` objects: a path prefix outside
        ``/api/`` (``"/hooks/"``) and the function that answers the
        requests under it. Two routes with the same prefix are a start-up
        error. The api plugin reads each request (its size limit and
        deadline apply), calls the route's handler and answers its result
        as JSON; without the api plugin nobody asks.

    Called once, on the thread that starts the server, by the api plugin's
    ``chatcore_server_start``. The handlers are called on the HTTP
    connections' reader threads, concurrently.

    .. versionadded:: 0.5
    """


@hookspec
def chatcore_moderation(server: ChatServer, action: str, details: dict[str, Any]) -> None:
    """An operator on another server of the cluster did ``action``: apply it
    here as if it were done here. The backplane calls this for what it
    carried (``Backplane.moderate`` on the server where it was done).

    :param server: this server.
    :param action: ``"kick"`` (``nick``, ``reason``), ``"mute"`` (``nick``,
        ``until``, and ``host`` where known), ``"unmute"`` (``target``: a
        nick or an address), ``"ban"`` (``network``, or ``nick`` for the
        server that user is on to ban their address everywhere; ``until``,
        ``reason``), ``"unban"`` (``network``).
    :param details: those fields, plus ``by`` and ``oper`` (the operator's
        nick and operator name), checked by the backplane; ``network`` is an
        ``ipaddress`` network; a kick is never given for one said before
        this server started.

    Called on the backplane's thread. Calls do not overlap.

    .. versionadded:: 0.3
    """


@hookspec(firstresult=True)
def chatcore_server_operator(client: Client) -> str | None:
    """The name ``client`` is a server operator under, or None if it is
    not one: server operators may do everything in every room (change its
    topic and modes, kick, invite) and pass its key, limit, bans and
    invitation rule. The bundled ``opers`` plugin answers for ``/oper``.

    Called on any client's thread, for each room action.

    .. versionadded:: 0.4
    """


@hookspec(firstresult=True)
def chatcore_backplane(server: ChatServer) -> Backplane | None:
    """Supply the server's backplane: what joins its rooms to the other
    servers of a cluster (:mod:`chatcore.engine.backplane`): the numbering of
    room events, publishing the events said here to the other servers,
    rooms' history across the cluster, nicknames and members elsewhere, and
    private messages to other servers.

    :param server: the server being made (its ``config`` is ready; it has not
        started: the engine calls the backplane's ``start(server)`` after
        ``chatcore_server_start``, and ``stop()`` after ``chatcore_server_stop``).
    :return: ``None``, or a :class:`~chatcore.engine.backplane.Backplane`
        (a subclass overriding what it supplies). The first plugin that
        returns one decides; without one, the server is on its own.

    Called once, on the thread that makes the server.

    .. versionadded:: 0.3 (replaces ``chatcore_sequencer``)
    """


@hookspec(firstresult=True)
def chatcore_account_service(server: ChatServer) -> AccountService | None:
    """Supply the server's account service
    (:class:`~chatcore.engine.accounts.AccountService`): how the protocols
    log a connection in to an account (IRC's SASL and ``PASS
    account:password``, a web login) without importing the plugin that
    keeps the accounts. They reach it as ``server.accounts``, which is None
    when no plugin answers (IRC then does not offer SASL). The bundled
    ``accounts`` plugin answers.

    :param server: the server (started or starting).
    :return: ``None``, or the service; the first plugin that returns one decides.

    Called once, on the thread that first asks for ``server.accounts``
    (a client's, or the main thread at start).

    .. versionadded:: 0.5
    """


@hookspec(firstresult=True)
def chatcore_history_service(server: ChatServer) -> HistoryService | None:
    """Supply the server's history service
    (:class:`~chatcore.engine.history.HistoryService`): how the protocols
    answer a client's questions about a room's or a private conversation's
    past (IRC's ``CHATHISTORY``, the web page's scroll-back, ``/history``)
    without importing the plugin that keeps it. They reach it as
    ``server.history``, which is None when no plugin answers (IRC then does
    not offer ``draft/chathistory``). The bundled ``history`` plugin answers.

    :param server: the server (started or starting).
    :return: ``None``, or the service; the first plugin that returns one decides.

    Called once, on the thread that first asks for ``server.history``.

    .. versionadded:: 0.6
    """


@hookspec(firstresult=True)
def chatcore_room_state(server: ChatServer, room: str) -> RoomState | None:
    """The state a plugin keeps for ``room``, which its first member here
    is entering: a registered room's topic, modes and lists, which outlive
    its members and restarts (the bundled ``accounts`` plugin keeps them).

    :param server: the server.
    :param room: the room's name (lower case).
    :return: ``None`` for a room the plugin does not keep (it is then made
        new, the entering member its operator), or a
        :class:`~chatcore.engine.rooms.RoomState` of that name, whose
        operators and voiced members are usually empty (nobody is in the
        room yet; give roles as people join, ``chatcore_client_joined``). In
        a cluster the backplane's live state wins over it (another server
        has members in the room), and it becomes the cluster's otherwise.

    Called on the entering client's thread, while no other member is here;
    calls for different rooms overlap. Keep it quick: a store read.

    .. versionadded:: 0.5
    """
