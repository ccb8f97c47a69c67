"""A network namespace joined to this one by veth pairs, whose links the
tests cut in the kernel: what a pulled cable or a dropping firewall does,
where the fault proxy (tests/faultproxy.py) resets or holds links in user
space.

:class:`Namespace` makes a namespace of its own (a unique name per use) with
two veth pairs to the test's namespace: the *service* link (a process inside
reaches Redis outside through it) and the *client* link (clients outside
reach a server inside through it), so that cutting the first leaves the
second up. Addresses are IPv4 link-local, 169.254.N.0/24 for one namespace
(a /30 per link), never routed off the machine: a blackhole route for the
whole /24 stays behind the links' own routes, so a packet for an address of
a cut link is dropped here instead of following the default route.

- :meth:`cut`: ``ip link set ... down`` on this side of the service link:
  everything on it is dropped silently, both ways: no reset, no error in
  the namespace (its route stays; its packets go nowhere); new connections
  from inside hang;
- :meth:`cut_answers`: an asymmetric partition: a blackhole route here for
  the inside address, so what the inside process sends arrives (and is
  carried out) and nothing comes back;
- :meth:`heal`: the link up again, the blackhole gone.

It needs root and ``ip`` (iproute2); :func:`require_root` skips without
them, except under CI (``CI=true``), where a missing one fails. The
namespace and the veths are removed on exit, whatever happened.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest


def require_root() -> str:
    """The ``ip`` command, if this process may make namespaces; else skip (fail in CI)."""
    ip = shutil.which("ip")
    why = None
    if ip is None:
        why = "the ip command (iproute2) is missing: apt-get install iproute2"
    elif os.geteuid() != 0:
        why = "network namespaces need root (CI runs as root)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why + " (a missing tool in CI is a failure)")
        pytest.skip(why)
    assert ip is not None
    return ip


class Namespace:
    def __init__(self) -> None:
        self.ip = require_root()
        self._made = False

    def _name(self, number: int) -> None:
        #: Unique per use: interface names are at most 15 characters.
        tag = f"cc{os.getpid() % 100000}{number:03d}"
        self.name = f"chatcore-{tag}"
        self.service = (f"{tag}s", f"{tag}S")  # (this side, inside)
        self.client = (f"{tag}c", f"{tag}C")
        self.subnet = f"169.254.{number}"
        #: The addresses: this side and inside, of each link.
        self.service_here, self.service_inside = f"{self.subnet}.1", f"{self.subnet}.2"
        self.client_here, self.client_inside = f"{self.subnet}.5", f"{self.subnet}.6"

    def _run(self, *args: str, check: bool = True) -> bool:
        done = subprocess.run([self.ip, *args], check=check, capture_output=True, timeout=10)
        return done.returncode == 0

    def __enter__(self) -> Namespace:
        # A /24 nobody here uses (another namespace's blackhole route says it
        # is taken); never 169.254.169.0/24, where clouds keep their metadata service.
        for number in random.sample([n for n in range(1, 255) if n != 169], 20):
            self._name(number)
            if self._run("route", "add", "blackhole", f"{self.subnet}.0/24", "metric", "4000", check=False):
                break
        else:
            raise AssertionError("no free 169.254.N.0/24 for a test namespace")
        self._made = True
        try:
            self._run("netns", "add", self.name)
            self._run("-n", self.name, "link", "set", "lo", "up")
            for (here, inside), (address_here, address_inside) in (
                (self.service, (self.service_here, self.service_inside)),
                (self.client, (self.client_here, self.client_inside)),
            ):
                self._run("link", "add", here, "type", "veth", "peer", "name", inside, "netns", self.name)
                self._run("addr", "add", f"{address_here}/30", "dev", here)
                self._run("-n", self.name, "addr", "add", f"{address_inside}/30", "dev", inside)
                self._run("link", "set", here, "up")
                self._run("-n", self.name, "link", "set", inside, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._made:
            return
        self._made = False
        # Deleting the namespace deletes the inside ends, and a veth pair goes with either end.
        self._run("netns", "delete", self.name, check=False)
        for here in (self.service[0], self.client[0]):
            self._run("link", "delete", here, check=False)
        self._run("route", "delete", "blackhole", f"{self.subnet}.0/24", check=False)
        self._run("route", "delete", "blackhole", f"{self.service_inside}/32", check=False)

    def command(self) -> list[str]:
        """The prefix that runs a command inside."""
        return [self.ip, "netns", "exec", self.name]

    def cut(self) -> None:
        self._run("link", "set", self.service[0], "down")

    def cut_answers(self) -> None:
        self._run("route", "add", "blackhole", f"{self.service_inside}/32")

    def heal(self) -> None:
        self._run("link", "set", self.service[0], "up")
        self._run("route", "delete", "blackhole", f"{self.service_inside}/32", check=False)
