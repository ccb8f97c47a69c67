"""Fuzz the cluster's entry codec (plugins/redis/codec.py) and the room
state fields (plugins/redis/roomstate.py): what one server reads of what
another wrote into Redis, or of damage.

Input: the first byte chooses the decoder, the rest is its input as UTF-8
text (invalid bytes replaced: redis-py hands the reader ``str``):

- 0 ``decode_event``, 1 ``decode_private``, 2 ``decode_moderation``;
- 3 ``entry_event`` and 4 ``state_from_fields``, of a hash whose fields
  and values alternate, separated by NUL.

Documented rejections: ``ValueError`` from the three decoders (the reader
drops the entry and counts it); ``KeyError`` or ``ValueError`` from
``entry_event`` (a missing field); ``state_from_fields`` raises nothing: it
leaves an invalid field out and reports it. Everything accepted must
survive a round trip: encoded again, it decodes to the same thing.
"""

from __future__ import annotations

import dataclasses

import _atheris

with _atheris.instrumented():
    from chatcore.plugins.redis.codec import (
        decode_event,
        decode_moderation,
        decode_private,
        encode_event,
        encode_moderation,
        encode_private,
        entry_event,
    )
    from chatcore.plugins.redis.roomstate import state_fields, state_from_fields

MAX_LINE = 4096


def _hash(text: str) -> dict[str, str]:
    parts = text.split("\0")
    return dict(zip(parts[::2], parts[1::2], strict=False))  # a last field without a value is left out


def _same_state(a: object, b: object) -> bool:
    return dataclasses.asdict(a) == dataclasses.asdict(b)  # type: ignore[call-overload]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, text = data[0] % 5, data[1:].decode("utf-8", "replace")
    if kind == 0:
        try:
            event = decode_event(text, MAX_LINE)
        except ValueError:
            return
        again = decode_event(encode_event(event), MAX_LINE)
        if again != event:
            raise AssertionError(f"round trip changed {event!r} into {again!r}")
    elif kind == 1:
        try:
            message = decode_private(text, MAX_LINE)
        except ValueError:
            return
        if decode_private(encode_private(message), MAX_LINE) != message:
            raise AssertionError(f"round trip changed {message!r}")
    elif kind == 2:
        try:
            record = decode_moderation(text, MAX_LINE)
        except ValueError:
            return
        details = dict(record)
        action = details.pop("action")
        if "network" in details:
            details["network"] = str(details["network"])
        again = decode_moderation(encode_moderation(action, details), MAX_LINE)
        if again != record:
            raise AssertionError(f"round trip changed {record!r} into {again!r}")
    elif kind == 3:
        try:
            entry_event(_hash(text), MAX_LINE)
        except (KeyError, ValueError):
            return
    else:
        dropped: list[str] = []
        state = state_from_fields("lobby", _hash(text), dropped.append)
        fields = state_fields(state)
        again = state_from_fields("lobby", fields, lambda field: dropped.append(f"again: {field}"))
        if any(field.startswith("again: ") for field in dropped) or not _same_state(state, again):
            raise AssertionError(f"the fields written for {state!r} read back as {again!r} ({dropped})")


if __name__ == "__main__":
    _atheris.fuzz(test_one_input)
