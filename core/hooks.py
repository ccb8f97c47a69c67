"""A typed facade over ``pm.hook``: how the server calls its plugins.

The server calls ``hooks.client_joined(client, room)``, not
``pm.hook.chatcore_client_joined(...)``: readers and type checkers see real
signatures, and this is the one place that decides what a failing plugin
does.

pluggy stops a hook call at the first implementation that raises. A chat
server must not lose a client or a message to one buggy plugin, so per-event
hooks call each implementation in pluggy's order (LIFO, with ``tryfirst`` /
``trylast`` honoured), log a failure with the plugin's name and go on.
Start-up hooks instead fail fast with a :class:`PluginError` that names the
plugin. Hook wrappers are not supported for chatcore hooks (checked when a
plugin is registered).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from chatcore.engine.backplane import Backplane
from chatcore.errors import UsageError

if TYPE_CHECKING:
    from chatcore.config import Config
    from chatcore.engine.accounts import AccountService
    from chatcore.engine.connection import Client
    from chatcore.engine.history import HistoryService
    from chatcore.engine.rooms import RoomState
    from chatcore.engine.server import ChatServer
    from chatcore.events import Joined, PrivateMessage, RoomEvent
    from chatcore.message import Message
    from chatcore.routes import Route
    from chatcore.transports import Scheme

log = logging.getLogger("chatcore.plugins")

_S = TypeVar("_S")

# After this many failures of one plugin in one hook, only every
# _LOG_EVERY-th further failure is logged, so a plugin that fails on every
# message cannot flood the log.
_LOG_FIRST = 5
_LOG_EVERY = 1000


class PluginError(Exception):
    """A plugin failed while the server was starting."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}: {type(error).__name__}: {error}")
        self.plugin = plugin
        self.hook = hook
        self.error = error


# One implementation, ready to call: (plugin name, call(*the hook's arguments)).
_Impl = tuple[str, Callable[..., Any]]


def _bind(function: Callable[..., Any], argnames: tuple[str, ...], specnames: tuple[str, ...]) -> Callable[..., Any]:
    """A caller of an implementation that takes the hook's arguments in
    the order of its specification.

    Nearly every implementation asks for all of them, in that order, and is
    called as it is: per-message hooks run on every line, and a wrapper
    (a lambda, an argument dict) was a frame and a dict per call and per
    implementation. pluggy lets an implementation ask for fewer: it gets
    an adapter that picks its own, spelled out per arity, since a call with
    a star-argument recurses in C where a plain call is run inline by
    CPython 3.11+ (each C level deepens the calling thread's stack).
    """
    if argnames == specnames:
        return function
    picks = tuple(specnames.index(name) for name in argnames)
    if not picks:
        return lambda *args: function()
    a = picks[0]
    if len(picks) == 1:
        return lambda *args: function(args[a])
    b = picks[1]
    if len(picks) == 2:
        return lambda *args: function(args[a], args[b])
    return lambda *args: function(*[args[pick] for pick in picks])


class _Implementations(dict[str, list[_Impl]]):
    """Each hook's implementations, ready to call, looked up on first use.

    A dict whose misses fill it: ``impls[hook]`` is one C-level lookup for a
    hook seen before, and hooks run on every message.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        super().__init__()
        self.pm = pm

    def __missing__(self, hook: str) -> list[_Impl]:
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        # pluggy calls the last of get_hookimpls() first.
        specnames = tuple(caller.spec.argnames) if caller.spec is not None else ()
        impls = [
            (impl.plugin_name, _bind(impl.function, tuple(impl.argnames), specnames))
            for impl in reversed(caller.get_hookimpls())
        ]
        self[hook] = impls
        return impls


class Hooks:
    """Calls the plugins registered with a plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._impls = _Implementations(pm)
        self._failures: dict[tuple[str, str], int] = {}
        # Failures are rare and each one is logged: a lock costs nothing next
        # to that, and keeps concurrent failures from being miscounted.
        self._failures_lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Forget the cached implementation lists (after (un)registering).
        A new cache, swapped in: a plugin loaded or unloaded while clients
        call hooks (a reload) never leaves a list made before the change in
        the cache a thread filled meanwhile."""
        self._impls = _Implementations(self.pm)
        #: True if a plugin implements ``chatcore_room_event`` (checked on
        #: every publish, so kept as a plain attribute).
        self.room_events_observed = bool(self._impls["chatcore_room_event"])
        #: The same for ``chatcore_room_changed``.
        self.room_changes_observed = bool(self._impls["chatcore_room_changed"])

    def implemented(self, name: str) -> bool:
        """True if any plugin implements the hook ``chatcore_<name>``."""
        return bool(self._impls["chatcore_" + name])

    # -- the three calling conventions --------------------------------------
    # For the hooks called per connection, command or room event: their
    # call(*args) is one C level on 3.11, on a reading thread. The hooks
    # called per message (message, message_delivered) loop on their own,
    # with plain calls.

    def _call_each(self, hook: str, *args: Any) -> list[Any]:
        """Call every implementation; log and skip the ones that raise."""
        results = []
        for plugin, call in self._impls[hook]:
            try:
                result = call(*args)
            except Exception as exc:
                self._failed(plugin, hook, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def _call_first(self, hook: str, *args: Any) -> Any:
        """Return the first true result; log and skip failures.

        ``False`` or ``""`` mean "not mine" as ``None`` does, so a plugin
        that answers a yes/no hook with False does not stop the chain.
        """
        for plugin, call in self._impls[hook]:
            try:
                result = call(*args)
            except Exception as exc:
                self._failed(plugin, hook, exc)
                continue
            if result:
                return result
        return None

    def _collect(self, hook: str, check: Callable[[Any], list[Any]], *args: Any) -> list[Any]:
        """Call every implementation and gather the items of its result;
        a plugin that raises, or returns something ``check`` rejects, is
        logged and skipped."""
        items: list[Any] = []
        for plugin, call in self._impls[hook]:
            try:
                result = call(*args)
                if result is not None:
                    items.extend(check(result))
            except Exception as exc:
                self._failed(plugin, hook, exc)
        return items

    def _call_strict(self, hook: str, *args: Any) -> None:
        """Call every implementation; the first failure stops the start."""
        for plugin, call in self._impls[hook]:
            try:
                call(*args)
            except UsageError:
                raise
            except Exception as exc:
                raise PluginError(plugin, hook, exc) from exc

    def _failed(self, plugin: str, hook: str, exc: Exception) -> None:
        key = (plugin, hook)
        with self._failures_lock:
            count = self._failures[key] = self._failures.get(key, 0) + 1
        if count <= _LOG_FIRST:
            log.error("plugin %r failed in %s (the event goes on without it)", plugin, hook, exc_info=exc)
        elif count % _LOG_EVERY == 0:
            log.error("plugin %r has failed %d times in %s; last error: %r", plugin, count, hook, exc)

    def failures(self, plugin: str) -> int:
        """How many times ``plugin`` has failed in per-event hooks."""
        return self.failure_counts().get(plugin, 0)

    def failure_counts(self) -> dict[str, int]:
        """Failures in per-event hooks so far, by plugin name."""
        totals: dict[str, int] = {}
        with self._failures_lock:
            for (name, _hook), count in self._failures.items():
                totals[name] = totals.get(name, 0) + count
        return totals

    # -- start-up and shutdown ----------------------------------------------

    def addoption(self, parser: argparse.ArgumentParser) -> None:
        self._call_strict("chatcore_addoption", parser)

    def configure(self, config: Config) -> None:
        self._call_strict("chatcore_configure", config)

    def server_start(self, server: ChatServer) -> None:
        self._call_strict("chatcore_server_start", server)

    def server_stop(self, server: ChatServer) -> None:
        self._call_each("chatcore_server_stop", server)

    def call_plugin(self, plugin: str, hook: str, *args: Any) -> Any:
        """Call the implementation of ``hook`` of the plugin named ``plugin``
        alone, if it has one: starting or stopping one plugin while the
        server runs (a reload that loads or unloads it).

        :raises UsageError: the plugin refused its configuration.
        :raises PluginError: it failed.
        """
        for name, call in self._impls[hook]:
            if name != plugin:
                continue
            try:
                return call(*args)
            except UsageError:
                raise
            except Exception as exc:
                raise PluginError(name, hook, exc) from exc
        return None

    def reload(
        self, server: ChatServer, old: argparse.Namespace, new: argparse.Namespace
    ) -> list[tuple[str, Callable[[], object]]]:
        """Every plugin's check of a reload; returns what applies it.

        :raises UsageError: a plugin refused a value.
        :raises PluginError: a plugin failed, or returned something that
            cannot be called.
        """
        appliers: list[tuple[str, Callable[[], object]]] = []
        for plugin, call in self._impls["chatcore_reload"]:
            try:
                result = call(server, old, new)
            except UsageError:
                raise
            except Exception as exc:
                raise PluginError(plugin, "chatcore_reload", exc) from exc
            if result is None:
                continue
            if not callable(result):
                raise PluginError(plugin, "chatcore_reload", TypeError(f"returned {result!r}, not a function"))
            appliers.append((plugin, result))
        return appliers

    def apply_reload(self, appliers: list[tuple[str, Callable[[], object]]]) -> None:
        """Call what :meth:`reload` returned; a failure is logged, the rest apply."""
        for plugin, apply in appliers:
            try:
                apply()
            except Exception as exc:
                self._failed(plugin, "chatcore_reload", exc)

    # -- connections and rooms ----------------------------------------------

    def connection_arriving(self, address: tuple[str, int], server: ChatServer) -> str | None:
        reason = self._call_first("chatcore_connection_arriving", address, server)
        return None if reason is None else str(reason)

    def welcome(self, client: Client) -> list[str]:
        return self._collect("chatcore_welcome", _lines, client)

    def client_joined(self, client: Client, room: str, event: Joined) -> None:
        self._call_each("chatcore_client_joined", client, room, event)

    def client_left(self, client: Client, room: str, reason: str) -> None:
        self._call_each("chatcore_client_left", client, room, reason)

    def account_changed(self, client: Client, old: str) -> None:
        if self._impls["chatcore_account_changed"]:
            self._call_each("chatcore_account_changed", client, old)

    # -- messages and commands ----------------------------------------------

    def message(self, message: Message) -> None:
        """Run the filter chain; it stops at the first rejection."""
        for plugin, call in self._impls["chatcore_message"]:
            try:
                call(message)
            except Exception as exc:
                self._failed(plugin, "chatcore_message", exc)
                continue
            if message.rejected is not None:
                return

    def message_delivered(self, message: Message, recipients: int) -> None:
        # After every message: its own loop, with a plain call (no star-argument).
        for plugin, call in self._impls["chatcore_message_delivered"]:
            try:
                call(message, recipients)
            except Exception as exc:
                self._failed(plugin, "chatcore_message_delivered", exc)

    def private_received(self, client: Client, event: PrivateMessage) -> None:
        if self._impls["chatcore_private_received"]:
            self._call_each("chatcore_private_received", client, event)

    def command(self, client: Client, name: str, args: str) -> bool:
        return bool(self._call_first("chatcore_command", client, name, args))

    def command_help(self, client: Client) -> list[tuple[str, str]]:
        return self._collect("chatcore_command_help", _help_entries, client)

    def server_operator(self, client: Client) -> str | None:
        name = self._call_first("chatcore_server_operator", client)
        return name if isinstance(name, str) else None

    def room_state(self, server: ChatServer, room: str) -> RoomState | None:
        from chatcore.engine.rooms import RoomState

        state = self._call_first("chatcore_room_state", server, room)
        if state is not None and not (isinstance(state, RoomState) and state.name == room):
            log.error("chatcore_room_state returned %r, not the RoomState of %r; ignored", state, room)
            return None
        return state

    def room_event(self, server: ChatServer, event: RoomEvent) -> None:
        self._call_each("chatcore_room_event", server, event)

    def room_changed(self, server: ChatServer, event: RoomEvent) -> None:
        self._call_each("chatcore_room_changed", server, event)

    def moderation(self, server: ChatServer, action: str, details: dict[str, Any]) -> None:
        self._call_each("chatcore_moderation", server, action, details)

    # -- listeners and clusters -----------------------------------------------

    def schemes(self) -> list[Scheme]:
        """Every plugin's schemes; a failure stops the start."""
        found: list[Scheme] = []
        for plugin, call in self._impls["chatcore_schemes"]:
            try:
                result = call()
                if result is not None:
                    found.extend(_schemes(result))
            except Exception as exc:
                raise PluginError(plugin, "chatcore_schemes", exc) from exc
        return found

    def api_routes(self, server: ChatServer) -> list[Route]:
        """Every plugin's HTTP routes (``chatcore_api_routes``); a failure,
        or two routes with one prefix, stops the start."""
        found: dict[str, Route] = {}
        for plugin, call in self._impls["chatcore_api_routes"]:
            try:
                result = call(server)
                for route in _routes(result) if result is not None else ():
                    if route.prefix in found:
                        raise ValueError(f"two plugins serve the HTTP paths under {route.prefix}")
                    found[route.prefix] = route
            except Exception as exc:
                raise PluginError(plugin, "chatcore_api_routes", exc) from exc
        return list(found.values())

    def account_service(self, server: ChatServer) -> AccountService | None:
        """A plugin's account service, or None (a failing plugin is logged and skipped)."""
        from chatcore.engine.accounts import AccountService

        return self._service("chatcore_account_service", server, AccountService)

    def history_service(self, server: ChatServer) -> HistoryService | None:
        """A plugin's history service, or None (a failing plugin is logged and skipped)."""
        from chatcore.engine.history import HistoryService

        return self._service("chatcore_history_service", server, HistoryService)

    def _service(self, hook: str, server: ChatServer, kind: type[_S]) -> _S | None:
        """The first ``kind`` a plugin answers ``hook`` with, or None."""
        service = self._call_first(hook, server)
        if service is not None and not isinstance(service, kind):
            log.error("%s returned %r, which is no %s; ignored", hook, service, kind.__name__)
            return None
        return service

    def backplane(self, server: ChatServer) -> Backplane | None:
        """A plugin's backplane, or None; a failure stops the start."""
        for plugin, call in self._impls["chatcore_backplane"]:
            try:
                result = call(server)
            except Exception as exc:
                raise PluginError(plugin, "chatcore_backplane", exc) from exc
            if result:  # None, False: not mine (docs/plugins.md, "When several plugins answer")
                if not isinstance(result, Backplane):
                    raise PluginError(
                        plugin,
                        "chatcore_backplane",
                        TypeError(f"{result!r} is not a chatcore.engine.backplane.Backplane"),
                    )
                return result
        return None


def _lines(result: Any) -> list[str]:
    """A welcome result: a line, or a list of lines."""
    lines = [result] if isinstance(result, str) else list(result)
    if not all(isinstance(line, str) for line in lines):
        raise TypeError(f"chatcore_welcome must return a list of strings, not {result!r}")
    return lines


def _schemes(result: Any) -> list[Scheme]:
    from chatcore.transports import Scheme

    schemes = list(result)
    if not all(isinstance(scheme, Scheme) for scheme in schemes):
        raise TypeError(f"chatcore_schemes must return a list of chatcore.transports.Scheme, not {result!r}")
    return schemes


def _routes(result: Any) -> list[Route]:
    from chatcore.routes import Route

    routes = list(result)
    if not all(isinstance(route, Route) for route in routes):
        raise TypeError(f"chatcore_api_routes must return a list of chatcore.routes.Route, not {result!r}")
    return routes


def _help_entries(result: Any) -> list[tuple[str, str]]:
    """A command_help result: (usage, help) pairs of strings."""
    entries = [tuple(entry) for entry in result]
    if not all(len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str) for e in entries):
        raise TypeError(f"chatcore_command_help must return (usage, help) pairs of strings, not {result!r}")
    return entries


def hook_names() -> Sequence[str]:
    """Every hook this facade calls, for the documentation meta-tests."""
    from chatcore import hookspecs

    return sorted(name for name in vars(hookspecs) if name.startswith("chatcore_"))
