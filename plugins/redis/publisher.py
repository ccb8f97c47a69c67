"""The redis plugin's publisher: this server's room events to the streams,
and the private lines it keeps to their conversations'."""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcore.events import Joined, PrivateMessage, RoomEvent
from chatcore.plugins.redis.arrivals import Cursor
from chatcore.plugins.redis.codec import encode_event, encode_private
from chatcore.plugins.redis.connection import Backoff, close, connect
from chatcore.plugins.redis.roomstate import state_changes
from chatcore.plugins.redis.scripts import EXIT_LUA, KEEP_PRIVATE_LUA, PUBLISH_LUA

if TYPE_CHECKING:
    import redis as redis_py

    from chatcore.plugins.redis.backplane import Cluster

log = logging.getLogger("chatcore.redis")

#: Events sent in one pipeline, at most.
BATCH = 500


@dataclass(slots=True)
class _Pending:
    seq: int
    room: str
    event: str
    #: The event's message ID (RoomEvent.msgid), the same on every server.
    msgid: str = ""
    #: Whether the reader waits to learn where this entry goes: the Joined of
    #: a room it does not read yet (see :class:`Arrivals`).
    placing: bool = False
    #: What the event changes in the room's state (roomstate.state_changes).
    changes: list[str] | None = None
    #: Not an event: this server lets go of the room it entered with this
    #: generation (``EXIT_LUA``), in order after its last events there.
    exit_generation: str | None = None
    #: Not a room event: a private line kept in the conversation ``room``
    #: (``KEEP_PRIVATE_LUA``): the two accounts, its time and how many
    #: lines the conversation keeps.
    private: tuple[str, str, float, int] | None = None


def _cured_by_retry(reply: object) -> bool:
    """A refusal that a retry on a fresh connection cures: the script cache
    was flushed between SCRIPT EXISTS and EVALSHA, or a failover left this
    link on a replica. Retrying is safe: the script drops what Redis has."""
    from redis.exceptions import NoScriptError, ReadOnlyError

    return isinstance(reply, (NoScriptError, ReadOnlyError))


class NotReplicated(Exception):
    """Fewer replicas than --redis-min-replicas confirmed a batch."""


class Publisher(threading.Thread):
    """Appends this server's room events to the streams, in order, from one thread.

    Client threads only append to a queue (:meth:`put`); the thread sends
    what is queued in pipelines of up to :data:`BATCH`. A batch that fails is
    sent again after a reconnection; the publish script drops the ones
    Redis already has, so nothing is added twice and each sender's order
    holds. An event is only ever given up loudly: refused by Redis (logged,
    counted in :attr:`dropped`) or pushed out of a full queue during an outage
    (logged, counted).
    """

    def __init__(self, cluster: Cluster, max_pending: int) -> None:
        super().__init__(name="chatcore-redis-publisher", daemon=True)
        self.cluster = cluster
        self.max_pending = max_pending
        self._queue: collections.deque[_Pending] = collections.deque()
        lock = threading.Lock()
        #: The publisher thread waits on it for events to send.
        self._cond = threading.Condition(lock)
        #: flush() waits on it for Redis's confirmations (a condition of its
        #: own: _cond's notify() must wake the publisher, not a flush).
        self._confirmed_changed = threading.Condition(lock)
        self._seq = 0
        #: Events given up: refused by Redis, or beyond --redis-max-pending.
        self.dropped = 0
        #: The last sequence number Redis has confirmed.
        self.confirmed = 0
        #: Since when (``time.time()``) sending to Redis has failed, and the
        #: last failure, while it fails; None while it works (``/readyz``).
        self.failing_since: float | None = None
        self.failure = ""

    def put(self, event: RoomEvent) -> None:
        """Queue ``event`` for Redis (called on the publishing thread)."""
        text = encode_event(event)
        changes = state_changes(event) if event.changes_state else None
        arrivals = self.cluster.arrivals
        with self._cond:
            self._seq += 1
            # Asked under this lock, so the entry the reader waits for is the
            # first of the room in queue order.
            placing = isinstance(event, Joined) and arrivals.entered(event.room, self._seq)
            self._queue.append(_Pending(self._seq, event.room, text, event.msgid, placing, changes))
            self._trim()
            self._cond.notify()

    def put_exit(self, room: str, generation: str) -> None:
        """Queue this server's letting go of ``room`` (its last member here
        left), after the events queued before: the room's last leave here
        still changes its state."""
        with self._cond:
            self._seq += 1
            self._queue.append(_Pending(self._seq, room, "", exit_generation=generation))
            self._trim()
            self._cond.notify()

    def put_private(self, key: str, message: PrivateMessage, accounts: tuple[str, str], lines: int) -> None:
        """Queue a private line for its conversation ``key``'s stream (any
        thread): retried through outages as room events are, in order."""
        with self._cond:
            self._seq += 1
            item = _Pending(self._seq, key, encode_private(message), message.msgid)
            item.private = (*accounts, message.time, lines)
            self._queue.append(item)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Under the lock: give up the oldest beyond --redis-max-pending."""
        if len(self._queue) <= self.max_pending:
            return
        lost = self._queue.popleft()
        if lost.placing:
            self.cluster.arrivals.placed(lost.room, lost.seq, None, "Redis was unreachable for too long")
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error("Redis unreachable: %d events not shared with the cluster so far", self.dropped)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is in Redis; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._confirmed_changed:
            target = self._seq
            while self.confirmed < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.is_alive():
                    return False
                # Looked at again now and then: a publisher that died never notifies.
                self._confirmed_changed.wait(min(remaining, 0.5))
            return True

    def waiting(self) -> int:
        """Events queued and not yet confirmed by Redis."""
        with self._cond:
            return len(self._queue)

    def _batch(self) -> list[_Pending]:
        with self._cond:
            while not self._queue and not self.cluster.stopping.is_set():
                self._cond.wait()
            return list(self._queue)[:BATCH] if len(self._queue) > BATCH else list(self._queue)

    def _confirm(self, last: int) -> None:
        with self._cond:
            while self._queue and self._queue[0].seq <= last:
                self._queue.popleft()
            self.confirmed = max(self.confirmed, last)
            self._confirmed_changed.notify_all()

    def _send(
        self, client: redis_py.Redis, script: Any, exit_script: Any, keep_script: Any, batch: list[_Pending]
    ) -> list[Any]:
        """One pipeline of ``batch``; the replies, one per event (a refusal
        as its ResponseError). Raises what calls for a retry of the batch."""
        cluster = self.cluster
        keys = cluster.keys
        pipe = client.pipeline(transaction=False)
        for item in batch:
            room = item.room
            if item.exit_generation is not None:
                exit_script(
                    keys=[keys.room_state(room), keys.room_holders(room), keys.node_rooms(cluster.node)],
                    args=[cluster.node, item.exit_generation, room],
                    client=pipe,
                )
                continue
            if item.private is not None:
                one, other, when, lines = item.private
                keep_script(
                    keys=[keys.conversation(room), keys.conversations(one), keys.conversations(other)],
                    args=[cluster.node, item.msgid, item.event, lines, when, room],
                    client=pipe,
                )
                continue
            script_keys = [keys.meta(room), keys.stream(room)]
            args: list[Any] = [
                cluster.node,
                item.seq,
                item.event,
                cluster.stream_length,
                secrets.token_hex(4),
                item.msgid,
            ]
            if item.changes:
                script_keys += [keys.room_state(room), keys.room_holders(room)]
                args += item.changes
            script(keys=script_keys, args=args, client=pipe)
        if cluster.min_replicas:
            # Defends against a loss in a switchover: an old primary that
            # lives on takes writes its promoted replica never gets, and drops
            # them when it is demoted. WAIT answers how many replicas have
            # everything this link wrote; too few and the batch is sent again
            # on a new link (to the primary the Sentinels name now), where the
            # script and the readers drop what is there already.
            pipe.wait(cluster.min_replicas, max(1, int(cluster.timeout * 1000 / 2)))
        # Replies item by item: a pipeline is not atomic, so one refusal does
        # not mean the others were not added.
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies:
            if _cured_by_retry(reply):
                raise reply
        if cluster.min_replicas:
            replicas = replies.pop()
            if not isinstance(replicas, int) or replicas < cluster.min_replicas:
                raise NotReplicated(f"{replicas} of the {cluster.min_replicas} replicas needed have the events")
        return replies

    def _settle(self, batch: list[_Pending], replies: list[Any]) -> None:
        """Tell the reader where the entries it waits for went; give up
        (loudly) the events Redis refused."""
        import redis as redis_py

        arrivals = self.cluster.arrivals
        refused: list[Exception] = []
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, redis_py.ResponseError):
                refused.append(reply)
                if item.placing:
                    arrivals.placed(item.room, item.seq, None, "Redis refused this server's events")
            elif item.placing:
                if isinstance(reply, list):
                    offset, entry_id, epoch = reply
                    arrivals.placed(item.room, item.seq, Cursor(str(entry_id), str(epoch), int(offset)))
                else:
                    # A repeat: Redis had it from a batch whose reply the link
                    # lost. Where it went is in the stream (the reader finds
                    # it by this server's number); only if it is not found
                    # there any more may something have been skipped.
                    arrivals.placed(
                        item.room, item.seq, None, "the cluster link dropped as the room was entered", in_stream=True
                    )
        if refused:
            # Not the link: out of memory, a wrong type at a key, a script
            # error. Retrying would block every later event behind these.
            with self._cond:
                self.dropped += len(refused)
            log.error(
                "Redis refused %d of %d events (%s); they are not shared with the cluster",
                len(refused),
                len(batch),
                refused[0],
            )

    def run(self) -> None:
        import redis as redis_py

        cluster = self.cluster
        client: redis_py.Redis | None = None
        script: Any = None
        exit_script: Any = None
        keep_script: Any = None
        failing = False
        backoff = Backoff()
        while not cluster.stopping.is_set():
            batch = self._batch()
            if not batch:
                continue
            try:
                if client is None:
                    client = connect(cluster.target, timeout=cluster.timeout, name=f"chatcore-{cluster.node}-pub")
                    script = client.register_script(PUBLISH_LUA)
                    exit_script = client.register_script(EXIT_LUA)
                    keep_script = client.register_script(KEEP_PRIVATE_LUA)
                replies = self._send(client, script, exit_script, keep_script, batch)
            except Exception as exc:
                if isinstance(exc, redis_py.ResponseError) and not _cured_by_retry(exc):
                    # The batch as a whole refused (loading the script): as above.
                    self._settle(batch, [exc] * len(batch))
                    self._confirm(batch[-1].seq)
                    continue
                # The link (dropped, timed out, a reply cut in the middle), a
                # refusal a fresh link cures, or anything unexpected: the
                # batch waits and is sent again (the script drops what Redis
                # already has); the thread never dies. Users hear of outages
                # from the reader alone (one voice, no flapping notices).
                self.failure = str(exc)
                if not failing:
                    self.failing_since = time.time()
                    expected = (redis_py.ConnectionError, redis_py.TimeoutError, redis_py.ResponseError, NotReplicated)
                    log.warning(
                        "publishing to Redis failed (%s); %d events wait, retrying",
                        exc,
                        len(batch),
                        exc_info=not isinstance(exc, expected),
                    )
                failing = True
                close(client)
                client = None
                backoff.wait(cluster.stopping)
                continue
            cluster.exchanged()
            if failing:
                log.warning("publishing to Redis works again")
            failing = False
            self.failing_since = None
            backoff.reset()
            self._settle(batch, replies)
            self._confirm(batch[-1].seq)
        close(client)
