"""HTTP paths that plugins serve on the api plugin's listeners.

The ``api`` plugin owns ``http://`` and ``https://`` listeners and every
path under ``/api/``. A plugin that needs an HTTP endpoint of its own (the
``webhooks`` plugin's ``/hooks/SECRET``) returns :class:`Route` objects
from ``chatcore_api_routes``; the api plugin sends it the requests whose
path starts with the route's prefix, already read and bounded (size,
deadline), and writes its answer as JSON. The plugin needs no HTTP code
of its own, and the api plugin knows nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatcore.engine.connection import Client

__all__ = ["HttpError", "HttpRequest", "Route"]


@dataclass(frozen=True)
class HttpRequest:
    """One whole request for a route.

    :ivar method: ``"POST"``, ``"GET"`` ...
    :ivar path: the path, without the query string, as sent (not
        percent-decoded).
    :ivar query: the query string, without the ``?`` (``""``: none).
    :ivar headers: the headers as h11 gives them: names in lower case, bytes.
    :ivar body: the body, at most the api plugin's body limit (16 KB).
    :ivar client: the HTTP connection (its ``address``, its ``server``).
    """

    method: str
    path: str
    query: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: Client

    def header(self, name: str) -> str:
        """The value of the header ``name`` (the last one given), decoded as
        Latin-1, or ``""``."""
        wanted = name.lower().encode("ascii")
        found = b""
        for key, value in self.headers:
            if key == wanted:
                found = value
        return found.decode("latin-1")

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters."""
        return self.header("content-type").split(";")[0].strip().lower()


class HttpError(Exception):
    """Raised by a route's handler: answered with ``status`` and
    ``{"error": text}``, and any extra ``headers``."""

    def __init__(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


@dataclass(frozen=True)
class Route:
    """Requests whose path starts with ``prefix`` go to ``handler``.

    :ivar prefix: a path that starts and ends with ``/`` (``"/hooks/"``),
        outside ``/api/`` and ``/admin/`` (the API and its admin page).
    :ivar handler: called with the :class:`HttpRequest` on the connection's
        reader thread (calls overlap); returns ``(status, object)``, the
        object answered as JSON, or raises :class:`HttpError`.
    :ivar description: a few words for the log at start.
    :ivar secret_path: the rest of the path is a credential (a webhook's
        secret URL): the api plugin then never writes it to its log, only
        the prefix.
    """

    prefix: str
    handler: Callable[[HttpRequest], tuple[int, Any]]
    description: str = ""
    secret_path: bool = False

    def __post_init__(self) -> None:
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")) or len(self.prefix) < 3:
            raise ValueError(f"a route's prefix starts and ends with '/', like '/hooks/', not {self.prefix!r}")
        # The api plugin answers these itself, so a route there would never be called.
        for own in ("/api/", "/admin/"):
            if self.prefix.startswith(own):
                raise ValueError(f"{self.prefix!r}: the paths under {own} are the api plugin's own")
