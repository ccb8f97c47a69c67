"""Writes joins (with the client's address), nick changes, leaves, room
operators' acts (topics, modes, kicks) and delivered messages as JSON lines
to a file: an audit trail of who came from where, under which names, did
what to which room, and said what."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import IO, Any, NamedTuple

from chatcore import Client, Config, Message, UsageError, hookimpl
from chatcore.engine.server import ChatServer
from chatcore.events import Left, ModeChanged, NickChanged, RoomEvent, TopicChanged
from chatcore.transports.listener import format_address

#: Loaded and unloaded by a reload (SIGHUP) while the server runs:
#: chatcore_server_stop undoes all that configuring and starting did.
UNLOADABLE = True

DEFAULT_LOG_FILE = "chatcore-events.jsonl"
#: How long the writing thread lets events pile up after the first one
#: before it writes them: under load it then wakes and writes a few times
#: a second, not once per message (each wake-up is a hand-off of the GIL
#: and each write a system call, on the CPU the chat threads share).
GATHER_DELAY = 0.05
#: Most events formatted and written in one go.
MAX_BATCH = 10_000

log = logging.getLogger("chatcore.plugins.logger")

# json's own string encoder (C-accelerated): quotes and escapes one string.
_json_string = encode_basestring


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logger plugin")
    group.add_argument(
        "--log-file",
        default=DEFAULT_LOG_FILE,
        metavar="PATH",
        help=(
            "JSON-lines event log (joins with the address, nick changes, leaves, messages), "
            "appended to; '-' for standard output (default: ./%(default)s)"
        ),
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    # Opened now so that a bad path stops the start with a clear message.
    config.data["logger"] = EventLog.open(config.options.log_file)


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Callable[[], None]:
    # Reopened on every reload, changed or not: after logrotate moved the
    # file away, this starts a new one under the name. Opened when applying,
    # so an abandoned reload leaves no file open.
    event_log = _log(server)

    def apply() -> None:
        try:
            stream, close = EventLog.open_stream(new.log_file)
        except UsageError as exc:
            log.error("reload: %s; still writing to the previous file", exc)
            return
        event_log.reopen(stream, close, new.log_file)

    return apply


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    _log(server).start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _log(server).stop()


@hookimpl
def chatcore_client_joined(client: Client, room: str) -> None:
    # The address with every join (a room move too): the later events of the
    # connection are tied to it by nick, and each nick change has it again.
    _log(client.server).put((time.time(), "join", client.nick, room, None, format_address(*client.address)))


@hookimpl
def chatcore_room_changed(server: ChatServer, event: RoomEvent) -> None:
    kind = type(event)
    if kind in _ROOM_ACTS:
        _log_room_act(server, event)
        return
    if type(event) is not NickChanged:  # (type(), not kind: what mypy narrows on)
        return
    # Renames of this server's own clients only: in a cluster each server's
    # log records its own connections (whose address it knows).
    client = server.registry.find(event.new_nick)
    if client is None:
        return
    _log(server).put(
        (time.time(), "nick", event.nick, event.room, None, (event.new_nick, format_address(*client.address)))
    )


#: Room events that may be an operator's act (a Left is one when it is a kick).
_ROOM_ACTS = frozenset({TopicChanged, ModeChanged, Left})


def _log_room_act(server: ChatServer, event: RoomEvent) -> None:
    """A topic, a mode change or a kick, by one of this server's clients (in
    a cluster each server records its own people's acts, once)."""
    if isinstance(event, TopicChanged):
        by, record = event.nick, ("topic", event.topic)
    elif isinstance(event, ModeChanged):
        by, record = event.nick, ("mode", " ".join((event.modes, *event.arguments)))
    elif isinstance(event, Left) and event.kicked_by:
        by, record = event.kicked_by, ("kick", f"{event.nick}: {event.kick_reason}")
    else:
        return
    if server.registry.find(by) is None:
        return
    kind, text = record
    _log(server).put((time.time(), kind, by, event.room, text, None))


@hookimpl
def chatcore_client_left(client: Client, room: str, reason: str) -> None:
    _log(client.server).put((time.time(), "leave", client.nick, room, None, reason))


@hookimpl
def chatcore_message_delivered(message: Message, recipients: int) -> None:
    # A private message records who it went to; its "room" is the sender's.
    extra = recipients if message.recipient is None else (recipients, message.recipient.nick)
    _log(message.sender.server).put((time.time(), message.kind, message.sender.nick, message.room, message.text, extra))


class _Reopen(NamedTuple):
    """On the log's queue: switch to this stream (a reload)."""

    stream: IO[str]
    close: bool
    path: str | None


def _log(server: ChatServer) -> EventLog:
    log: EventLog = server.config.data["logger"]
    return log


class EventLog:
    """Takes events from the client threads; a background thread writes.

    The hooks only put a tuple on a queue, so logging adds next to nothing
    to the broadcast path (and never an open or close per line); the thread
    formats the JSON, writes whatever has piled up in one go and flushes
    when the queue runs dry: about :data:`GATHER_DELAY` after an event was
    recorded, or at once behind a backlog or when the server stops.

    Log rotation: the file is reopened on every reload (SIGHUP), and the
    thread also notices, at most a second late, that the file under its
    name is no longer the one it writes to (moved or deleted by logrotate,
    as logging's WatchedFileHandler does), so a rotation is never missed
    even if the reload that should follow it fails.
    """

    def __init__(self, stream: IO[str], close: bool, path: str | None = None) -> None:
        self._stream = stream
        self._close = close
        self._path = path  # None: not a file we can reopen (standard output)
        self._next_check = 0.0
        self._queue: queue.SimpleQueue[tuple[Any, ...] | _Reopen | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chatcore-logger", daemon=True)
        self.put = self._queue.put
        #: Events dropped because the file could not be written.
        self.lost = 0
        self._second = -1
        self._second_text = ""
        self._millis = -1
        self._stamp = ""

    @classmethod
    def open(cls, path: str) -> EventLog:
        stream, close = cls.open_stream(path)
        return cls(stream, close, path if close else None)

    @staticmethod
    def open_stream(path: str) -> tuple[IO[str], bool]:
        """The file to append to, and whether it is ours to close."""
        if path == "-":
            return sys.stdout, False
        try:
            stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by stop() or a reopen)
        except OSError as exc:
            raise UsageError(f"--log-file {path}: cannot open it for writing ({exc.strerror})") from None
        return stream, True

    def reopen(self, stream: IO[str], close: bool, path: str | None = None) -> None:
        """Write to ``stream`` (opened from ``path``) from now on; the old
        file is closed by the writing thread once everything queued before
        is in it."""
        if self._thread.is_alive():
            self._queue.put(_Reopen(stream, close, path))
        else:  # not started (or stopped): nobody else writes
            self._switch(_Reopen(stream, close, path))

    def _switch(self, reopen: _Reopen) -> None:
        old, close_old = self._stream, self._close
        self._stream, self._close = reopen.stream, reopen.close
        self._path = reopen.path if reopen.close else None
        if close_old:
            try:
                old.close()
            except OSError as exc:
                log.error("closing the old event log failed: %s", exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write everything recorded so far, then close the file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(10)
        if self._close:
            self._stream.close()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            # Woken from idle by one event: let others join it. Behind a
            # backlog, or when stopping, write at once.
            idle = self._queue.empty()
            batch = [get()]
            if idle and batch[0] is not None:
                time.sleep(GATHER_DELAY)
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(get())
            lines: list[str] = []
            for event in batch:
                if event is not None and not isinstance(event, _Reopen):
                    lines.append(self._format(event))
                    continue
                if lines:  # what came before goes to the old file
                    self._write("".join(lines), len(lines))
                    lines = []
                if event is None:
                    return
                self._switch(event)
            if lines:
                self._follow_rotation()
                self._write("".join(lines), len(lines))

    def _follow_rotation(self) -> None:
        """Reopen the file if another file now has its name, or none has."""
        now = time.monotonic()
        if self._path is None or now < self._next_check:
            return
        self._next_check = now + 1.0
        try:
            ours = os.fstat(self._stream.fileno())
            named = os.stat(self._path)
            if (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino):
                return
        except FileNotFoundError:
            pass  # moved away and not replaced yet: start it
        except (OSError, ValueError):
            return  # the write below reports what is wrong
        try:
            stream, close = self.open_stream(self._path)
        except UsageError as exc:
            log.error("the event log was moved away and cannot be reopened: %s", exc)
            return
        log.info("the event log %s was moved away (log rotation); writing to a new one", self._path)
        self._switch(_Reopen(stream, close, self._path))

    def _write(self, text: str, count: int) -> None:
        # A full disk or a closed pipe must not end the thread: the queue
        # would then grow for ever. Events are dropped while writing fails
        # (and counted); the log says so once, and again when it recovers.
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if not self.lost:
                log.error("cannot write the event log (%s); dropping events until it can", exc)
            self.lost += count
            return
        if self.lost:
            log.warning("writing the event log again; %d events were lost", self.lost)
            self.lost = 0

    def _format(self, event: tuple[Any, ...]) -> str:
        # Called once per event under the GIL that the chat threads need too,
        # so it avoids json.dumps of a dict and datetime.isoformat (together
        # 10x slower): the time stamp is cached per millisecond (lines come
        # dozens to a millisecond under load), only the strings go through
        # the C JSON string encoder, and a message, nearly every event, is
        # one f-string (a third cheaper than the same %-template, whose
        # format is parsed again on every call).
        when, kind, nick, room, text, extra = event
        millis = int(when * 1000)
        if millis != self._millis:
            self._millis = millis
            second = millis // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = f"{self._second_text}.{millis % 1000:03d}+00:00"
        if kind in _MESSAGE_KINDS and type(extra) is int:
            return (
                f'{{"time": "{self._stamp}", "event": "{kind}", "nick": {_json_string(nick)}, '
                f'"room": {_json_string(room)}, "text": {_json_string(text)}, "recipients": {extra}}}\n'
            )
        record = (
            f'{{"time": "{self._stamp}", "event": "{kind}", "nick": {_json_string(nick)}, "room": {_json_string(room)}'
        )
        if text is not None:
            record += f', "text": {_json_string(text)}'
        if kind == "join":
            record += f', "address": {_json_string(extra)}'
        elif kind == "nick":
            new_nick, address = extra
            record += f', "new_nick": {_json_string(new_nick)}, "address": {_json_string(address)}'
        elif kind == "leave":
            record += f', "reason": {_json_string(extra)}'
        elif extra is not None:
            if isinstance(extra, tuple):  # a private message: (recipients, to)
                extra, to = extra
                record += f', "to": {_json_string(to)}'
            record += f', "recipients": {int(extra)}'
        return record + "}\n"


#: Message kinds whose record is the one f-string of ``_format`` (with a
#: recipient count, and no "to": a private message's extra is a pair).
_MESSAGE_KINDS = frozenset({"chat", "action", "notice"})
