"""Scenario: steady chat. Users chat in rooms at a steady rate.

Each user connects to one of the run's servers, sets a nickname, joins one of
``--rooms`` rooms (round robin) and sends ``--message-rate`` messages per
second while receiving everything in the background; see ``_chatuser.py``
and the README for the options.

    locust -f loadtest/chat.py --host tcp://127.0.0.1:12000
    locust -f loadtest/chat.py --host tcp://127.0.0.1:12000 --headless -u 100 -r 20 -t 1m
    locust -f loadtest/chat.py --host tls://chat.example:12001 --ca ca.pem
    locust -f loadtest/chat.py --chat-hosts tcp://10.0.0.1:12000,tcp://10.0.0.2:12000
    locust -f loadtest/chat.py --host ws://127.0.0.1:8080             # web users; irc://, ircs://, wss:// too
    locust -f loadtest/chat.py --chat-hosts tcp://h:12000,ws://h:8080,irc://h:6667 --chat-mix tcp=6,ws=3,irc=1
"""

from __future__ import annotations

from _chatuser import BaseChatUser


class ChatUser(BaseChatUser):
    """A chat client that sends at a steady rate and receives in the background."""
