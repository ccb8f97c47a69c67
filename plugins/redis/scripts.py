"""The redis plugin's key names and the Lua scripts that change several
keys at once (publishing an event, claiming and releasing a nickname)."""

from __future__ import annotations


class Keys:
    """Key names, all under ``chatcore:CLUSTER:`` so clusters share a Redis."""

    def __init__(self, cluster: str) -> None:
        self.prefix = f"chatcore:{cluster}:"

    def stream(self, room: str) -> str:
        """The room's events: entries ``v``, ``node``, ``epoch``, ``offset``, ``event``."""
        return f"{self.prefix}room:{room}:stream"

    def nodes(self) -> str:
        """The set of the cluster's servers (node ids)."""
        return f"{self.prefix}nodes"

    def alive(self, node: str) -> str:
        """Exists while the node renews it (expires after --redis-node-timeout)."""
        return f"{self.prefix}node:{node}"

    def members(self, node: str) -> str:
        """The node's clients: a hash nick -> room."""
        return f"{self.prefix}node:{node}:members"

    def member_counts(self, node: str) -> str:
        """How many of the node's clients are in each room: a hash room ->
        count, read by the other servers for the welcome's count."""
        return f"{self.prefix}node:{node}:counts"

    def away(self, node: str) -> str:
        """The node's clients who are away: a hash nick -> away message."""
        return f"{self.prefix}node:{node}:away"

    def inbox(self, node: str) -> str:
        """Private messages for the node's clients: a stream."""
        return f"{self.prefix}node:{node}:inbox"

    def nick(self, nick: str) -> str:
        """Who holds a nickname (ignoring case): the node id."""
        return f"{self.prefix}nick:{nick.casefold()}"

    def moderation(self) -> str:
        """Operators' actions for every server (kick, mute, ban ...): a stream."""
        return f"{self.prefix}moderation"

    def reaping(self, node: str) -> str:
        """Held by the one server that announces a gone node's leaves."""
        return f"{self.prefix}reap:{node}"

    def room_state(self, room: str) -> str:
        """The room's topic, modes, lists and roles, while some server holds it
        (a hash: :mod:`chatcore.plugins.redis.roomstate`)."""
        return f"{self.prefix}room:{room}:state"

    def store(self, kind: str) -> str:
        """The state store's records of one kind: a hash key -> JSON
        (:mod:`chatcore.plugins.redis.store`). Never expires."""
        return f"{self.prefix}store:{kind}"

    def room_holders(self, room: str) -> str:
        """The servers with members in the room: a hash node -> generation."""
        return f"{self.prefix}room:{room}:holders"

    def node_rooms(self, node: str) -> str:
        """The rooms the node holds: a set (the reaper lets go of them for a node gone)."""
        return f"{self.prefix}node:{node}:rooms"

    def conversation(self, key: str) -> str:
        """A private conversation's kept lines (``key`` as
        :func:`chatcore.engine.history.conversation` names it,
        ``@alice,bob``): a stream of entries ``v``, ``node``, ``id``, ``event``,
        as an inbox's."""
        return f"{self.prefix}private:{key.removeprefix('@')}:stream"

    def conversations(self, account: str) -> str:
        """The private conversations an account has kept lines in: a sorted
        set of their names, scored by the time of the latest line."""
        return f"{self.prefix}account:{account.casefold()}:conversations"

    def meta(self, room: str) -> str:
        """The room's hash: ``epoch``, ``offset`` (the last one given) and,
        per publishing node, ``node:ID`` = the node's last sequence number."""
        return f"{self.prefix}room:{room}:meta"


# Appends one event to a room's stream, atomically: the epoch (created when
# Redis has none: a new room, or Redis lost it), the next offset, and the
# entry. The offset and the entry are made together, so the stream's order
# is the offsets' order and a reader can tell a hole from a late entry.
#
# A retried publish (the link dropped after Redis ran it, before the reply)
# must not add the event twice: each node numbers its events 1, 2, 3 ... and
# sends them in that order from one thread, so an event whose number is not
# above the last one Redis recorded for the node in this room is a repeat.
# The entry carries the number too ('seq'): a retry that reached another
# copy of the room (a switchover: the old primary took it, the new one did
# not have it yet) is added there again, and readers drop it by that number.
#
# An event that changes the room's state (a topic, a mode, a role moved by
# a join, leave or rename) changes its state hash in the same step, if some
# server holds the room: made once, in the stream's order.
#
# KEYS: meta, stream, and for a change of state the room's state and holders.
# ARGV: node, sequence, event JSON, maxlen, new epoch, the event's message ID
# (RoomEvent.msgid), then the changes as triples (roomstate.state_changes). Returns {offset, entry id, epoch}
# (where the entry went: the reader starts a room its clients entered
# there), or 0 for a repeat.
PUBLISH_LUA = """
local field = 'node:' .. ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[1], field) or '0')
if tonumber(ARGV[2]) <= last then
    return 0
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
    epoch = ARGV[5]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('HSET', KEYS[1], field, ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'v', '1', 'node', ARGV[1], 'seq', ARGV[2], 'epoch', epoch, 'offset', offset, 'event', ARGV[3], 'id', ARGV[6])
if #ARGV > 6 and redis.call('EXISTS', KEYS[4]) == 1 then
    for i = 7, #ARGV, 3 do
        local op, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
        if op == 'set' then
            redis.call('HSET', KEYS[3], a, b)
        elseif op == 'del' then
            redis.call('HDEL', KEYS[3], a)
        elseif op == 'move' then
            for _, role in ipairs({'o:', 'v:', 'i:'}) do
                if redis.call('HDEL', KEYS[3], role .. a) == 1 then
                    redis.call('HSET', KEYS[3], role .. b, '1')
                end
            end
        end
    end
end
return {offset, id, epoch}
"""

# A server's first member enters a room: the server becomes one of its
# holders, and gets the room's state, or makes it (the room is new in the
# cluster: its entering member runs it). The generation orders a server's
# entries, so that a late EXIT of an earlier entry lets go of nothing.
# KEYS: state, holders, the node's rooms, the room's stream. ARGV: node,
# generation, room, then the new state's fields and values. Returns {the
# state's fields and values (HGETALL), or 0 if the given state was made;
# the id of the stream's last entry, or '0-0'}: the state is the room's as
# of that entry (the reader applies the changes after it that come before
# this server's Joined, which it does not deliver).
ENTER_LUA = """
local top = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local top_id = '0-0'
if top[1] then
    top_id = top[1][1]
end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {redis.call('HGETALL', KEYS[1]), top_id}
end
for i = 4, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {0, top_id}
"""

# A server lets go of a room it entered with that generation (its last
# member there left; '*': any, for a server gone); the last holder to let
# go takes the state with it. KEYS: state, holders, the node's rooms.
# ARGV: node, generation, room. Returns 1 if the state went.
EXIT_LUA = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and (ARGV[2] == '*' or held == ARGV[2]) then
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('SREM', KEYS[3], ARGV[3])
end
if redis.call('HLEN', KEYS[2]) == 0 then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


# Claims a nickname for a node, atomically: free, already the node's, or
# held by a node that stopped renewing its presence (it is being reaped).
# KEYS: nick, ARGV: node, the prefix of presence keys. Returns 1 or 0.
CLAIM_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# Gives a nickname up if the node holds it. KEYS: nick, ARGV: node.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


# Keeps a private line between two accounts (Backplane.keep_private): the
# entry in the conversation's stream, and the conversation in each
# account's list, at the time of its latest line. A retry after a dropped
# reply may add the line twice: readers drop a message ID seen already.
# KEYS: the conversation's stream, the two accounts' lists (the same one
# twice for notes to oneself). ARGV: node, the line's message ID, its JSON
# (as an inbox entry's), maxlen, its time, the conversation's name.
KEEP_PRIVATE_LUA = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'v', '1', 'node', ARGV[1], 'id', ARGV[2], 'event', ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[3], 'GT', ARGV[5], ARGV[6])
return 1
"""
