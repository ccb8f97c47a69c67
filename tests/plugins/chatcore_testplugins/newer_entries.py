"""A test plugin that makes its server write the cluster's entries as a
newer version might: every room event and private message with an optional
field this version does not know (docs/scaling.md, "What a rolling upgrade
may change"). Load it after ``redis``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chatcore import Config, hookimpl
from chatcore.plugins.redis import presence, publisher

#: The field a newer version added; any JSON value.
NEWER_FIELD = {"from_the_future": {"priority": 1, "labels": ["x"]}}


def _newer(encode: Callable[[Any], str]) -> Callable[[Any], str]:
    def encode_newer(event: Any) -> str:
        return json.dumps({**json.loads(encode(event)), **NEWER_FIELD}, separators=(",", ":"), ensure_ascii=False)

    return encode_newer


@hookimpl
def chatcore_configure(config: Config) -> None:
    # Where the redis plugin's threads look the encoders up (their modules' own names).
    for module, name in [(publisher, "encode_event"), (publisher, "encode_private"), (presence, "encode_private")]:
        setattr(module, name, _newer(getattr(module, name)))
